"""Freeze the backbone, train the head, then unfreeze layer groups on an epoch schedule.

Built on Lightning's ``BaseFinetuning`` (its checkpointed param-group metadata restores the
optimizer on resume), with three fixes that matter in practice:

* **Resume past a milestone.** Lightning re-freezes everything in ``setup``. We store how
  many groups were unfrozen and unfreeze them again in ``load_state_dict``, which runs
  before the optimizer and the DDP wrapper are built, so they see the right parameters.
* **DDP.** DDP registers only the parameters that require grad when it wraps the model, so
  groups unfrozen later would train on each rank's local gradients and drift apart
  (Lightning #20340). After every backward we all-reduce (average) the gradients of those
  late-unfrozen parameters ourselves. The test suite checks both ranks end bit-identical.
* **Identity, not equality.** ``BaseFinetuning.filter_on_optimizer`` compares parameters
  with ``torch.equal``, which treats two freshly initialised BatchNorm weights (all ones)
  as the same tensor and silently drops one. We compare by identity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import timm
import torch.nn as nn
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning
from torch.optim import Optimizer

from genre_lightning.training.probe import DEFAULT_C_GRID, LinearProbe
from genre_lightning.utils.distributed import average_gradients
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)


def backbone_layer_groups(net: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's parameters in timm's coarse layer groups (stem first), classifier excluded."""
    classifier = {id(p) for p in net.get_classifier().parameters()}
    named = dict(net.named_parameters())
    if hasattr(net, "group_matcher"):
        groups = timm.models.group_parameters(net, net.group_matcher(coarse=True))
        ordered = [[named[n] for n in names] for _, names in sorted(groups.items())]
    else:  # a model without layer groups is one group
        ordered = [list(named.values())]
    ordered = [[p for p in group if id(p) not in classifier] for group in ordered]
    return [group for group in ordered if group]


def _split_evenly(items: list, count: int) -> list[list]:
    """``count`` contiguous parts whose sizes differ by at most one (the first parts are larger)."""
    size, extra = divmod(len(items), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(count)]


class GradualUnfreeze(BaseFinetuning):
    """Train only the classifier, then unfreeze the backbone from the top down.

    The backbone's layer groups are split into ``len(milestones)`` contiguous chunks; at
    epoch ``milestones[i]`` chunk ``i`` (counted from the top) becomes trainable, in a new
    optimizer param group whose LR is the head's current LR times
    ``backbone_lr_scale * lr_decay ** i``. ``milestones=[]`` never unfreezes (linear probe).

    ``head_init=probe`` starts from a fitted linear probe instead of timm's random head (LP-FT: the
    head has converged before any backbone layer trains; ``probe.py``), fitted when training starts.

    BatchNorm layers keep their running statistics while they are frozen. Once unfrozen, they
    update them unless ``freeze_bn_stats`` keeps them for the whole run (only the weights train);
    ``None`` keeps them when the backbone started from pretrained weights, where they are the better
    estimate on a few hundred posters (docs/RESULTS.md, v17), and updates them for a random init.
    """

    def __init__(
        self,
        milestones: Sequence[int],
        backbone_lr_scale: float = 0.1,
        lr_decay: float = 1.0,
        freeze_bn_stats: bool | None = None,
        head_init: str = "random",
        probe_c_grid: Sequence[float] = DEFAULT_C_GRID,
    ) -> None:
        super().__init__()
        if head_init not in ("random", "probe"):
            raise ConfigError("finetune.head_init", head_init, "random (timm's new head) or probe (fitted)")
        self.probe = LinearProbe(probe_c_grid) if head_init == "probe" else None
        if isinstance(milestones, int | float | str) or milestones is None:
            raise ConfigError("finetune.milestones", milestones, "a list of epoch numbers, e.g. [2] or [1,3,5]")
        milestones = list(milestones)
        if any(m < 0 for m in milestones) or milestones != sorted(milestones):
            raise ConfigError("finetune.milestones", milestones, "a non-decreasing list of epoch numbers >= 0")
        if backbone_lr_scale <= 0:
            raise ConfigError("finetune.backbone_lr_scale", backbone_lr_scale, "a positive LR multiplier")
        if lr_decay <= 0:
            raise ConfigError("finetune.lr_decay", lr_decay, "a positive LR multiplier per deeper chunk")
        self.freeze_bn_stats = freeze_bn_stats
        self.milestones = milestones
        self.backbone_lr_scale = backbone_lr_scale
        self.lr_decay = lr_decay
        self.unfrozen_chunks = 0
        self._chunks: list[list[nn.Parameter]] = []
        self._ddp_registered: set[int] | None = None

    def chunks(self, pl_module: LightningModule) -> list[list[nn.Parameter]]:
        """Parameter chunks, top of the network first."""
        if not self._chunks:
            groups = backbone_layer_groups(pl_module.net)[::-1]
            count = max(1, min(len(self.milestones), len(groups)))
            self._chunks = [[p for group in part for p in group] for part in _split_evenly(groups, count)]
            if len(self.milestones) > len(groups):
                log.warning(
                    "%d milestones but only %d layer groups; the last milestones unfreeze nothing",
                    len(self.milestones),
                    len(groups),
                )
        return self._chunks

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        self._module = pl_module
        keep = self.freeze_bn_stats
        if keep is None:
            keep = bool(pl_module.hparams.get("pretrained") or pl_module.hparams.get("weights"))
        pl_module.set_batchnorm_policy(keep)  # applied per batch by the module
        for chunk in self.chunks(pl_module):
            for param in chunk:
                param.requires_grad = False
        self._set_trainable(self.unfrozen_chunks)

    def _set_trainable(self, count: int) -> None:
        for chunk in self.chunks(self._module)[:count]:
            for param in chunk:
                param.requires_grad = True

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        chunks = self.chunks(pl_module)
        while (
            self.unfrozen_chunks < min(len(chunks), len(self.milestones))
            and epoch >= self.milestones[self.unfrozen_chunks]
        ):
            index = self.unfrozen_chunks
            head = optimizer.param_groups[0]
            scale = self.backbone_lr_scale * self.lr_decay**index
            lr = head["lr"] * scale
            self._set_trainable(index + 1)
            self._add_param_group(
                pl_module.trainer,
                optimizer,
                chunks[index],
                lr,
                base_lr=head.get("initial_lr", head["lr"]) * scale,
                name=f"backbone{index + 1}",
            )
            self.unfrozen_chunks += 1
            if pl_module.trainer.is_global_zero:  # epochs count from 1, as in the progress lines
                log.info(
                    "epoch %d: unfroze backbone chunk %d/%d (%d tensors, milestone %d) at lr %.2e",
                    epoch + 1,
                    index + 1,
                    len(chunks),
                    len(chunks[index]),
                    self.milestones[index],
                    lr,
                )

    @staticmethod
    def _add_param_group(
        trainer: Trainer, optimizer: Optimizer, params: list[nn.Parameter], lr: float, base_lr: float, name: str
    ) -> None:
        """Add ``params`` as a group starting at ``lr``; ``base_lr`` is its LR before any scheduling
        (what closed-form schedulers such as warm-up + cosine scale), scaled like ``lr``."""
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [p for p in params if id(p) not in present]
        if not new:
            return
        optimizer.add_param_group({"params": new, "lr": lr, "initial_lr": base_lr, "name": name})
        # LR schedulers keep one base LR per group; without this the new group is not scheduled.
        for config in trainer.lr_scheduler_configs:
            if config.scheduler.optimizer is optimizer:
                for attribute, value in (("base_lrs", base_lr), ("min_lrs", 0.0)):
                    values = getattr(config.scheduler, attribute, None)
                    if isinstance(values, list) and len(values) < len(optimizer.param_groups):
                        values.append(value)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "unfrozen_chunks": self.unfrozen_chunks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.unfrozen_chunks = int(state_dict.get("unfrozen_chunks", 0))
        if hasattr(self, "_module"):  # setup() already ran: unfreeze before optimizers and DDP exist
            self._set_trainable(self.unfrozen_chunks)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        # Named groups give LearningRateMonitor stable tags (lr-AdamW/head, lr-AdamW/backbone1, ...):
        # without names the head's curve would move from lr-AdamW to lr-AdamW/pg1 at the first milestone.
        for optimizer in trainer.optimizers:
            optimizer.param_groups[0].setdefault("name", "head")
        # The model is wrapped by now: these are the parameters DDP itself all-reduces.
        self._ddp_registered = {id(p) for p in pl_module.parameters() if p.requires_grad}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Not on resume: the checkpoint holds the head (fitted, and maybe fine-tuned since).
        if self.probe is not None and trainer.global_step == 0:
            self.probe.fit(trainer, pl_module)

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank, every step, the same list: chosen by what is trainable, never by which
        # gradients this rank happens to have (the rule in distributed.py).
        registered = self._ddp_registered or set()
        late = [p for p in pl_module.parameters() if p.requires_grad and id(p) not in registered]
        average_gradients(late)
