"""GenreClassifier: one LightningModule around any timm backbone.

It trains and evaluates; what differs between one genre and several genres per poster is its task
object (``training/tasks.py``), chosen once. Prediction from Python lives in ``inference/``
(``Predictor``), checkpoint reading in ``models/checkpoint_io.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from lightning.pytorch import LightningModule
from torchmetrics import MeanMetric, MetricCollection

from genre_lightning.models.checkpoint_io import load_module, read_checkpoint, upgrade_state_dict
from genre_lightning.models.multi_backbone import normalise_backbones
from genre_lightning.models.network import build_network
from genre_lightning.models.pooled_features import PooledFeatures
from genre_lightning.models.prediction_task import TASKS
from genre_lightning.models.tta import TTA, resolve_tta, with_tta
from genre_lightning.training.epoch_metrics import EpochMetricsLogging
from genre_lightning.training.feature_cache import backbone_is_frozen
from genre_lightning.training.feature_store import FeatureStore
from genre_lightning.training.tasks import make_task
from genre_lightning.training.tta_settings import TTASettings
from genre_lightning.utils.errors import ConfigError
from genre_lightning.utils.plain_values import to_plain

log = logging.getLogger(__name__)

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.01}
STAGES = ("train", "val", "test")


class GenreClassifier(TTASettings, EpochMetricsLogging, LightningModule):
    """A timm backbone with a ``len(classes)``-way head, torchmetrics, and optimiser/scheduler from config.

    Args:
        backbone: any ``timm`` model name, or a list of them: their pooled features concatenated, one
            head on them (``models/multi_backbone.py``).
        classes: genre names, in label-index order.
        pretrained: load ImageNet weights from the Hugging Face Hub.
        weights: a local timm-format weights file (wins over ``pretrained``); for several backbones a
            list of files (null for none) or a mapping backbone name -> file.
        optimizer: a Hydra config with ``_target_`` (the parameters are passed in here).
        scheduler: a Hydra config for ``torch.optim.lr_scheduler`` (optimizer is added here), or None.
        scheduler_interval: ``epoch`` or ``step``: how often the scheduler steps, so also the unit of
            its horizon (the configs' ``T_max``/``max_epochs``/``step_size`` are epochs; with ``step``,
            give them in optimizer steps).
        label_smoothing: label smoothing of the loss.
        drop_rate: dropout before the classifier (timm's ``drop_rate``).
        drop_path_rate: stochastic depth in the backbone (timm's ``drop_path_rate``).
        mixup: options of timm's ``Mixup`` (``mixup_alpha``, ``cutmix_alpha``, ``prob``...) for training
            batches, or None; label smoothing then happens inside the mixed targets.
        data_config: overrides of timm's data config (``input_size``, ``crop_pct``, ...); None keeps timm's.
        channels_last: run the network in channels-last memory format.
        tta_hflip: at evaluation and prediction, average the logits of each image and its mirror image.
        tta: test-time views beyond the flip (``models/tta.py``: ``hflip``, ``scales``, ``crops``,
            ``crop_zoom``; its ``hflip`` defaults to ``tta_hflip``); None: ``tta_hflip`` alone.
        task: ``single`` (one genre per poster: softmax, cross-entropy) or ``multilabel`` (any number:
            a sigmoid per genre, ``BCEWithLogitsLoss``, per-genre thresholds tuned on the validation
            split after every validation epoch; ``val/acc`` is then top-1 "any true genre" accuracy).
            See ``training/tasks.py``.
        threshold: multi-label only: one decision threshold for every genre instead of the tuned ones.
        pos_weight: multi-label only: weigh each genre's positives by (negatives / positives) in the
            training split, so rare genres are not drowned out.
        members: an ensemble's members (``training.ensemble.member_spec``): the network is then their
            ``EnsembleNet`` (written by genre-ensemble; evaluated and served, never trained).
        temperature: single-label only: None fits the temperature of ``softmax(logits / T)`` on the
            validation split after every validation epoch; a positive number fixes it (1.0: none).
        class_weights: single-label only: None, ``auto`` (inverse frequency in the training split, mean
            weight 1 over its posters) or ``{genre: weight}``; the hyper-parameters (so the checkpoint)
            hold the resolved ``{genre: weight}`` once training starts. ``training/losses.py``.
        loss: single-label only: ``cross_entropy`` or ``focal`` (with ``focal_gamma``).
    """

    def __init__(
        self,
        backbone: str | Sequence[str],
        classes: Sequence[str],
        pretrained: bool = False,
        weights: str | Sequence[str | None] | Mapping[str, str] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
        drop_rate: float = 0.0,
        data_config: Mapping[str, Any] | None = None,
        channels_last: bool = False,
        tta_hflip: bool = False,
        drop_path_rate: float = 0.0,
        mixup: Mapping[str, Any] | None = None,
        task: str = "single",
        threshold: float | None = None,
        pos_weight: bool = False,
        members: Sequence[Mapping[str, Any]] | None = None,
        temperature: float | None = None,
        class_weights: str | Mapping[str, float] | None = None,
        loss: str = "cross_entropy",
        focal_gamma: float = 2.0,
        tta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ConfigError("model.scheduler_interval", scheduler_interval, "epoch or step")
        if task not in TASKS:
            raise ConfigError("model.task", task, "single or multilabel (it follows data.task)")
        # Plain values (a checkpoint loads with weights_only=True, which refuses OmegaConf objects):
        # save_hyperparameters below saves every argument as it is at that point.
        backbone, weights, classes, optimizer, scheduler, data_config, mixup, members, class_weights = map(
            to_plain, (backbone, weights, classes, optimizer, scheduler, data_config, mixup, members, class_weights)
        )
        tta = to_plain(tta)
        resolve_tta(tta, tta_hflip, "model.tta")  # a bad value fails here, in one line
        backbone, weights = normalise_backbones(backbone, weights)
        classes, optimizer = list(classes), optimizer or DEFAULT_OPTIMIZER
        # the loggers get the whole resolved config instead (results/tracking.log_config)
        self.save_hyperparameters(logger=False)
        self.classes = list(classes)
        self.task = make_task(
            task, self.classes, label_smoothing, threshold, pos_weight, temperature, class_weights, loss, focal_gamma
        )
        self.net, self.data_config = build_network(
            backbone, len(self.classes), pretrained, weights, drop_rate, drop_path_rate, data_config, members
        )
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.mixup = self.task.mixup(mixup, label_smoothing)
        self._add_metrics()
        # Stored backbone features, while the backbone is frozen: see use_feature_store().
        self._feature_store: FeatureStore | None = None
        # Whether trainable BatchNorm layers keep their running statistics: see set_batchnorm_policy().
        self.keep_batchnorm_statistics = False
        # Images that failed to decode: (stage, dataset index, reason); training/failed_images.py names them.
        self.failed_items: list[tuple[str, int, str]] = []
        self.distill: Any = None  # a teacher's targets (training/distill.py), attached before training

    def _add_metrics(self) -> None:
        """Each stage's metrics (test/ece_uncalibrated: before temperature scaling), epoch loss (over every
        rank's images) and top-1 "any true genre" accuracy (tasks.GenreTask.any_true_metric)."""
        self.train_metrics = self.task.metrics("train/")
        self.val_metrics = self.task.metrics("val/")
        self.test_metrics = self.task.metrics("test/", detailed=True)
        self.test_uncalibrated = self.task.uncalibrated_metric()
        for stage in STAGES:
            setattr(self, f"{stage}_loss", MeanMetric())
            setattr(self, f"{stage}_any_true", MeanMetric())

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> GenreClassifier:
        """Load for evaluation: safe unpickling, and no weight download (the checkpoint holds all weights).
        For prediction, ``genre_lightning.inference.Predictor.from_checkpoint`` is lighter."""
        return load_module(cls, read_checkpoint(path)).to(map_location)

    def new_state_defaults(self) -> dict[str, torch.Tensor]:
        """State a checkpoint written before it existed lacks: its starting value (checkpoint_io.upgrade_state_dict)."""
        return {f"task.{name}": buffer for name, buffer in self.task.named_buffers()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A resumed run (trainer.fit(ckpt_path=...)) also reads older checkpoints in today's names.
        upgrade_state_dict(checkpoint["state_dict"], self.new_state_defaults())

    # What callbacks and entry points may change, as methods (nothing else sets state from outside).
    def use_feature_store(self, store: FeatureStore | None) -> None:
        """Serve the backbone's features from ``store`` (for the stages in ``store.stages``) while the
        backbone is frozen; None computes them every time. Called by ``FrozenFeatureCache``."""
        self._feature_store = store

    def set_batchnorm_policy(self, keep_statistics: bool) -> None:
        """Whether BatchNorm layers whose weights train keep their running statistics (frozen layers
        always keep theirs). Called by ``GradualUnfreeze`` (``finetune.freeze_bn_stats``)."""
        self.keep_batchnorm_statistics = bool(keep_statistics)

    def set_threshold(self, threshold: float | None) -> None:
        """Multi-label: decide every genre at ``threshold`` instead of the thresholds tuned on the
        validation split (None: the tuned ones again). genre-eval / genre-predict ``threshold=``."""
        if not self.task.multilabel:
            if threshold is None:
                return
            raise ConfigError("threshold", threshold, "null for a single-label checkpoint (it takes the top genre)")
        self.task.set_threshold(threshold)
        self.hparams.threshold = threshold

    def set_channels_last(self, enabled: bool) -> None:
        """Run the network in channels-last memory (faster convolutions on CPUs)."""
        self.hparams.channels_last = bool(enabled)
        self.net = self.net.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def loss_settings(self) -> dict[str, Any]:
        """What the training loss was (metrics.json's ``loss``): its kind, the focal exponent, and
        each genre's class weight (None: unweighted)."""
        focal = self.hparams.get("loss", "cross_entropy") == "focal"
        return {
            "loss": self.hparams.get("loss", "cross_entropy"),
            "focal_gamma": self.hparams.get("focal_gamma") if focal else None,
            "class_weights": self.hparams.get("class_weights"),
        }

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.task.fit_setup(getattr(self.trainer, "datamodule", None))
            weights = getattr(self.task, "resolved_class_weights", lambda: None)()
            if weights is not None:  # the values, not "auto": the checkpoint's model weighs as it trained
                self.hparams.class_weights = weights

    def _stage_metrics(self, stage: str) -> MetricCollection:
        return getattr(self, f"{stage}_metrics")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        net = self.net if self.training else self.inference_net()
        return net(self._memory_format(images))

    def _memory_format(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else images

    @torch.no_grad()
    def backbone_features(
        self, images: torch.Tensor, flip_average: bool | TTA = False, parts: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Pooled backbone features (what the classifier sees), computed in eval mode. Averaged with
        the mirror image's features when ``flip_average``, or over a TTA's views (the classifier is
        linear, so this equals averaging the logits). ``parts``: of a several-backbone network, those
        backbones' only."""
        views = flip_average if isinstance(flip_average, TTA) else TTA(hflip=bool(flip_average))
        modes = [(module, module.training) for module in self.net.modules()]
        self.net.eval()
        try:
            pooled = with_tta(PooledFeatures(self.net, parts), views)
            return pooled(self._memory_format(images))
        finally:
            for module, mode in modes:
                module.training = mode

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier on pooled features, with the dropout the network applies before it."""
        if self.hparams.drop_rate:  # (dropout with p=0 still draws random numbers)
            features = nn.functional.dropout(features, self.hparams.drop_rate, self.training)
        return self.net.get_classifier()(features)

    def _logits(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        store = self._feature_store
        # Checked per step too: a fine-tuning callback may have unfrozen layers since the store was attached.
        if store is not None and stage in store.stages and backbone_is_frozen(self):
            views = self.test_time_augmentation(stage)
            features = store.features(
                batch["key"], batch["image"], lambda x, parts=None: self.backbone_features(x, views, parts)
            )
            return self.classify_features(features)
        return self(batch["image"])

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # A BatchNorm whose weights are frozen also keeps its running statistics (frozen layers
        # compute what they computed when they were trained); one that trains updates them, unless
        # the fine-tuning callback keeps every statistic (finetune.freeze_bn_stats). Set per batch,
        # from the trainable flags: Lightning restores each module's mode after every validation
        # run, and a resumed run must train exactly as an uninterrupted one.
        if not self.training:
            return
        keep_statistics = self.keep_batchnorm_statistics
        for module in self.net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                trainable = module.weight is None or module.weight.requires_grad
                module.train(trainable and not keep_statistics)

    def _shared_step(self, batch: dict[str, Any], stage: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(loss, logits) of a batch, with the stage's metrics updated; None: an evaluation batch without images."""
        self.failed_items.extend((stage, index, reason) for index, reason in batch["failed"])
        targets = self.task.targets(batch)
        if targets.numel() == 0:
            if stage != "train":
                return None
            # Every image of this batch failed to decode. A zero loss that touches every trainable
            # parameter keeps DDP ranks in step (a skipped step on one rank would hang the others).
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0, None
        if stage == "train" and self.mixup is not None and len(targets) % 2 == 0:
            # Mixed images and soft targets; no metrics for them (they would not mean much).
            images, mixed_targets = self.task.mix(self.mixup, batch["image"], targets)
            logits = self(images)
            loss = self.task.mixed_loss(logits, mixed_targets)
        else:
            logits = self._logits(batch, stage)
            loss = self.task.loss(logits, targets)
            if stage == "train" and self.distill is not None:
                loss = self.distill.loss(loss, logits, batch["key"])
            # Probabilities, not logits: torchmetrics' calibration error applies softmax only to a batch
            # with a value outside [0, 1], so a batch of small logits would be scored as probabilities.
            probabilities = self.task.probabilities(logits.detach().float())
            self.task.update_metrics(self._stage_metrics(stage), probabilities, targets)
            hits = self.task.any_true_hits(logits, batch, stage)
            if hits is not None:
                getattr(self, f"{stage}_any_true").update(hits)
            if stage == "val":
                self.task.observe_validation(logits.detach().float(), probabilities, targets)
            if stage == "test" and self.test_uncalibrated is not None:
                self.test_uncalibrated.update(self.task.uncalibrated_probabilities(logits.detach().float()), targets)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=len(targets))
        if stage == "train":  # per step: this rank's loss, unsynced (no collective: utils/distributed.py)
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(targets))
        return loss, logits

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")
        tuned = self.task.after_validation(self.trainer.sanity_checking)
        if tuned:
            self._log_global_values(tuned)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")[0]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        """Per-image probabilities, targets and dataset indices, for callbacks (``results/run_artifacts.py``)."""
        result = self._shared_step(batch, "test")
        if result is None:
            return None
        probabilities = self.task.probabilities(result[1].detach().float())
        return {"probs": probabilities, "target": batch["target"], "index": batch["index"]}

    def configure_optimizers(self) -> Any:
        from hydra.utils import instantiate  # the optimizer and scheduler configs carry a _target_

        # Only trainable parameters: a fine-tuning callback adds the rest as it unfreezes them.
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = instantiate(self.hparams.optimizer, params=params)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler, optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval, "monitor": "val/acc"},
        }
