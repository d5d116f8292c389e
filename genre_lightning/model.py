"""GenreClassifier: one LightningModule around any timm backbone."""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from hydra.utils import instantiate
from lightning.pytorch import LightningModule
from PIL import Image
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MultilabelPrecisionRecallCurve

from genre_lightning.backbone import create_backbone, resolve_data_config
from genre_lightning.data.dataset import build_transforms
from genre_lightning.distributed import any_rank
from genre_lightning.ensemble import EnsembleNet
from genre_lightning.errors import ConfigError
from genre_lightning.feature_cache import FeatureStore, backbone_is_frozen
from genre_lightning.inference import GenrePrediction, ImageInput, predict_images
from genre_lightning.metrics import classification_metrics
from genre_lightning.multilabel import (
    DEFAULT_THRESHOLD,
    mix_multi_hot,
    multilabel_metrics,
    tune_thresholds,
    update_multilabel_metrics,
)
from genre_lightning.plain import to_plain

log = logging.getLogger(__name__)
# Epoch values are computed, and synced across ranks, by the metrics themselves and logged with
# sync_dist=False on purpose (distributed.py); Lightning would recommend sync_dist=True for each.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.01}
# Where genre-train before 0.2 recorded the training augmentation in a checkpoint (now the data
# module's own checkpoint state); genre-eval still reads it from older checkpoints.
TRAINING_DATA_KEY = "genre_lightning_training_data"


def _update_called(metric: Metric | MetricCollection) -> bool:
    members = metric.values() if isinstance(metric, MetricCollection) else [metric]
    return any(member.update_called for member in members)


class FlipAveraged(nn.Module):
    """Test-time augmentation: logits averaged over an image and its left-right mirror image."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.net(images) + self.net(images.flip(-1))) / 2


class GenreClassifier(LightningModule):
    """A timm backbone with a ``len(classes)``-way head, torchmetrics, and optimiser/scheduler from config.

    Args:
        backbone: any ``timm`` model name.
        classes: genre names, in label-index order.
        pretrained: load ImageNet weights from the Hugging Face Hub.
        weights: a local timm-format weights file (wins over ``pretrained``).
        optimizer: a Hydra config with ``_target_`` (the parameters are passed in here).
        scheduler: a Hydra config for ``torch.optim.lr_scheduler`` (optimizer is added here), or None.
        scheduler_interval: ``epoch`` or ``step``: how often the scheduler steps, so also the unit of
            its horizon (the configs' ``T_max``/``max_epochs``/``step_size`` are epochs; with ``step``,
            give them in optimizer steps).
        label_smoothing: cross-entropy label smoothing.
        drop_rate: dropout before the classifier (timm's ``drop_rate``).
        drop_path_rate: stochastic depth in the backbone (timm's ``drop_path_rate``).
        mixup: options of timm's ``Mixup`` (``mixup_alpha``, ``cutmix_alpha``, ``prob``...) for training
            batches, or None; label smoothing then happens inside the mixed targets.
        data_config: overrides of timm's data config (``input_size``, ``crop_pct``, ...); None keeps timm's.
        channels_last: run the network in channels-last memory format.
        tta_hflip: at evaluation and prediction, average the logits of each image and its mirror image.
        task: ``single`` (one genre per poster: softmax, cross-entropy) or ``multilabel`` (any number:
            a sigmoid per genre, ``BCEWithLogitsLoss``, per-genre thresholds tuned on the validation
            split after every validation epoch; ``val/acc`` is then top-1 "any true genre" accuracy).
        threshold: multi-label only: one decision threshold for every genre instead of the tuned ones.
        pos_weight: multi-label only: weigh each genre's positives by (negatives / positives) in the
            training split, so rare genres are not drowned out.
        members: an ensemble's members (``ensemble.member_spec``): the network is then their
            ``EnsembleNet`` (written by genre-ensemble; evaluated and served, never trained).
    """

    def __init__(
        self,
        backbone: str,
        classes: Sequence[str],
        pretrained: bool = False,
        weights: str | None = None,
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
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ConfigError("model.scheduler_interval", scheduler_interval, "epoch or step")
        if task not in ("single", "multilabel"):
            raise ConfigError("model.task", task, "single or multilabel (it follows data.task)")
        _check_threshold(threshold)
        classes, optimizer, scheduler, data_config, mixup, members = map(
            to_plain, (classes, optimizer, scheduler, data_config, mixup, members)
        )
        self.save_hyperparameters(
            {
                "backbone": backbone,
                "classes": list(classes),
                "pretrained": pretrained,
                "weights": weights,
                "optimizer": optimizer or DEFAULT_OPTIMIZER,
                "scheduler": scheduler,
                "scheduler_interval": scheduler_interval,
                "label_smoothing": label_smoothing,
                "drop_rate": drop_rate,
                "data_config": data_config,
                "channels_last": channels_last,
                "tta_hflip": tta_hflip,
                "drop_path_rate": drop_path_rate,
                "mixup": mixup,
                "task": task,
                "threshold": threshold,
                "pos_weight": pos_weight,
                "members": members,
            },
            logger=False,  # the loggers get the whole resolved config instead (tracking.log_config)
        )
        self.classes = list(classes)
        extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        if members:  # genre-ensemble: the members' networks, their probabilities averaged
            self.net = EnsembleNet(members, len(self.classes))
        else:
            self.net = create_backbone(backbone, len(self.classes), pretrained, weights, drop_rate=drop_rate, **extra)
        self.multilabel = task == "multilabel"
        # Multi-label: Mixup mixes the multi-hot targets itself (mix_multi_hot), with smoothing applied after.
        mixup_smoothing = 0.0 if self.multilabel else label_smoothing
        self.mixup = Mixup(**mixup, label_smoothing=mixup_smoothing, num_classes=len(self.classes)) if mixup else None
        self.data_config = self.net.data_config if members else resolve_data_config(self.net, data_config)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.soft_target_criterion = SoftTargetCrossEntropy()  # Mixup's mixed targets
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        metrics = multilabel_metrics if self.multilabel else classification_metrics
        self.train_metrics = metrics(self.classes, "train/")
        self.val_metrics = metrics(self.classes, "val/")
        self.test_metrics = metrics(self.classes, "test/", detailed=True)
        if self.multilabel:
            n = len(self.classes)
            # Buffers, so a checkpoint (and the export sidecar) carries the tuned thresholds.
            self.register_buffer("thresholds", torch.full((n,), DEFAULT_THRESHOLD))
            self.register_buffer("positive_weights", torch.ones(n))
            self.val_curve = MultilabelPrecisionRecallCurve(n, thresholds=None)  # exact, synced over ranks
            self.train_acc_multi_genre = MeanMetric()  # top-1 "any true genre", logged as train/acc
        # Each stage's epoch loss (train/loss, val/loss, test/loss), averaged over every rank's images.
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        # Accuracy where any genre of a multi-genre item counts (duplicate policy multi_genre).
        self.val_acc_multi_genre = MeanMetric()
        self.test_acc_multi_genre = MeanMetric()
        # Stored backbone features, while the backbone is frozen: see use_feature_store().
        self._feature_store: FeatureStore | None = None
        # Whether trainable BatchNorm layers keep their running statistics: see set_batchnorm_policy().
        self.keep_batchnorm_statistics = False
        # Images that failed to decode during the run: (stage, dataset index, reason); the entry point
        # that knows the data module names their files (runtime.images_skipped_during_run).
        self.failed_items: list[tuple[str, int, str]] = []

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> GenreClassifier:
        """Load for evaluation or prediction: safe unpickling, and no weight download (the
        checkpoint holds all weights)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError("ckpt_path", str(path), "an existing .ckpt file written by genre-train")
        try:
            model = cls.load_from_checkpoint(
                path, map_location=map_location, weights_only=True, pretrained=False, weights=None
            )
        except pickle.UnpicklingError as err:  # it holds objects that would run code when loaded
            first_line = str(err).strip().splitlines()[0][:160]
            raise ConfigError(
                "ckpt_path", str(path), f"a checkpoint that loads with weights_only=True ({first_line})"
            ) from None
        return model.eval()

    @property
    def eval_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The checkpoint's evaluation transform: an RGB PIL image to the tensor the network takes."""
        return build_transforms(self.data_config, None)[1]

    def predict(
        self, images: ImageInput | Sequence[ImageInput], top_k: int = 3, batch_size: int = 32
    ) -> list[GenrePrediction]:
        """Genre probabilities and the top ``top_k`` genres of each image, in input order.

        ``images``: file paths, PIL images, a ``uint8`` (3, H, W) / (N, 3, H, W) tensor of raw RGB
        pixels (all three through :attr:`eval_transform`), or a float tensor batch that is already
        preprocessed. Runs in eval mode on the model's device. A file that cannot be decoded gives a
        :class:`GenrePrediction` with ``error`` set instead of raising.
        """
        return predict_images(self, images, top_k=top_k, batch_size=batch_size)

    # What callbacks and entry points may change, as methods (nothing else sets state from outside).
    def use_feature_store(self, store: FeatureStore | None) -> None:
        """Serve the backbone's features from ``store`` (for the stages in ``store.stages``) while the
        backbone is frozen; None computes them every time. Called by ``FrozenFeatureCache``."""
        self._feature_store = store

    def set_batchnorm_policy(self, keep_statistics: bool) -> None:
        """Whether BatchNorm layers whose weights train keep their running statistics (frozen layers
        always keep theirs). Called by ``GradualUnfreeze`` (``finetune.freeze_bn_stats``)."""
        self.keep_batchnorm_statistics = bool(keep_statistics)

    def set_flip_tta(self, enabled: bool) -> None:
        """Average each image's logits with its mirror image's at evaluation and prediction (recorded
        in the hyper-parameters, so an export or a saved checkpoint says so too)."""
        self.hparams.tta_hflip = bool(enabled)

    def set_threshold(self, threshold: float | None) -> None:
        """Multi-label: decide every genre at ``threshold`` instead of the thresholds tuned on the
        validation split (None: the tuned ones again). genre-eval / genre-predict ``threshold=``."""
        if threshold is not None and not self.multilabel:
            raise ConfigError("threshold", threshold, "null for a single-label checkpoint (it takes the top genre)")
        _check_threshold(threshold, key="threshold")
        self.hparams.threshold = threshold

    def decision_thresholds(self) -> torch.Tensor:
        """Multi-label: each genre's decision threshold (``model.threshold`` if set, else the tuned ones)."""
        if self.hparams.threshold is not None:
            return torch.full_like(self.thresholds, float(self.hparams.threshold))
        return self.thresholds

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Genre probabilities from logits: softmax (one genre) or a sigmoid per genre (multi-label)."""
        return logits.sigmoid() if self.multilabel else logits.softmax(dim=-1)

    def setup(self, stage: str) -> None:
        if self.multilabel and self.hparams.pos_weight and stage == "fit":
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "train_label_counts"):
                raise ConfigError("model.pos_weight", True, "false unless training with the PosterDataModule")
            counts, total = datamodule.train_label_counts()
            positives = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
            self.positive_weights.copy_((total - positives).clamp(min=1) / positives)
            log.info("pos_weight per genre: %s", dict(zip(self.classes, self.positive_weights.tolist(), strict=True)))

    def set_channels_last(self, enabled: bool) -> None:
        """Run the network in channels-last memory (faster convolutions on CPUs)."""
        self.hparams.channels_last = bool(enabled)
        self.net = self.net.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def _stage_metrics(self, stage: str) -> MetricCollection:
        return getattr(self, f"{stage}_metrics")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        net = self.net if self.training else self.inference_net()
        return net(self._memory_format(images))

    def inference_net(self) -> nn.Module:
        """The plain network that evaluation and prediction run: with flip TTA, the average of the
        logits of each image and its mirror image."""
        return FlipAveraged(self.net).train(self.training) if self.hparams.tta_hflip else self.net

    def flip_averaged(self, stage: str) -> bool:
        """Whether this stage averages each image with its mirror image (test-time augmentation)."""
        return bool(self.hparams.tta_hflip) and stage != "train"

    def _memory_format(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else images

    @torch.no_grad()
    def backbone_features(self, images: torch.Tensor, flip_average: bool = False) -> torch.Tensor:
        """Pooled backbone features (what the classifier sees), computed in eval mode. Averaged with
        the mirror image's features when ``flip_average`` (the classifier is linear, so this equals
        averaging the logits)."""
        modes = [(module, module.training) for module in self.net.modules()]
        self.net.eval()
        try:
            views = [images, images.flip(-1)] if flip_average else [images]
            pooled = [
                self.net.forward_head(self.net.forward_features(self._memory_format(v)), pre_logits=True) for v in views
            ]
            return sum(pooled) / len(pooled)
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
            flip = self.flip_averaged(stage)
            features = store.features(batch["key"], batch["image"], lambda x: self.backbone_features(x, flip))
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
        """(loss, logits) of a batch, with the stage's metrics updated; None for an evaluation batch
        without images."""
        self.failed_items.extend((stage, index, reason) for index, reason in batch["failed"])
        targets = batch["target"]
        if targets.numel() == 0:
            if stage != "train":
                return None
            # Every image of this batch failed to decode. A zero loss that touches every trainable
            # parameter keeps DDP ranks in step (a skipped step on one rank would hang the others).
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0, None
        if self.multilabel:
            return self._multilabel_step(batch, stage)
        if stage == "train" and self.mixup is not None and targets.numel() % 2 == 0:
            # Mixed images and soft targets; no accuracy for them (it would not mean much).
            images, soft_targets = self.mixup(batch["image"], targets)
            logits = self(images)
            loss = self.soft_target_criterion(logits, soft_targets)
        else:
            logits = self._logits(batch, stage)
            loss = self.criterion(logits, targets)
            # Probabilities, not logits: torchmetrics' calibration error applies softmax only to a batch
            # with a value outside [0, 1], so a batch of small logits would be scored as probabilities.
            self._stage_metrics(stage).update(logits.softmax(dim=-1), targets)
        if "label_set" in batch and stage != "train":
            hit = batch["label_set"].gather(1, logits.argmax(dim=1, keepdim=True)).float()
            getattr(self, f"{stage}_acc_multi_genre").update(hit)
        self._log_loss(stage, loss, targets.numel())
        return loss, logits

    def _multilabel_step(self, batch: dict[str, Any], stage: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        targets = batch["target"].float()  # (N, C) multi-hot
        if stage == "train" and self.mixup is not None and len(targets) % 2 == 0:
            images, mixed = mix_multi_hot(self.mixup, batch["image"], targets)
            logits = self(images)
            loss = self._binary_loss(logits, mixed)
        else:
            logits = self._logits(batch, stage)
            loss = self._binary_loss(logits, targets)
            probabilities = logits.detach().float().sigmoid()
            update_multilabel_metrics(self._stage_metrics(stage), probabilities, targets, self.decision_thresholds())
            # Top-1 "any true genre": comparable with a single-label run's acc_multi_genre on the same posters.
            getattr(self, f"{stage}_acc_multi_genre").update(targets.gather(1, logits.argmax(dim=1, keepdim=True)))
            if stage == "val":
                self.val_curve.update(probabilities, targets.long())
        self._log_loss(stage, loss, len(targets))
        return loss, logits

    def _binary_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        smoothing = self.hparams.label_smoothing
        targets = targets * (1 - smoothing) + smoothing / 2  # binary label smoothing, towards 0.5
        weights = self.positive_weights if self.hparams.pos_weight else None
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)

    def _log_loss(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=batch_size)
        if stage == "train":  # per step: this rank's loss, unsynced (no collective; see distributed.py)
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)

    def _log_epoch_metrics(self, stage: str) -> None:
        """Compute the stage's epoch metrics on every rank and log the (already global) values.

        compute() syncs each metric across DDP ranks. Whether a metric was updated can differ between
        ranks (a rank whose images all failed, a Mixup epoch with one odd batch), so the ranks first
        agree on which metrics to compute, in one collective; then all of them compute the same ones
        in the same order (the rule in distributed.py).
        """
        # Multi-label: the top-1 "any true genre" accuracy is the run's acc (what checkpoints monitor).
        top1_any_true = f"{stage}/acc" if self.multilabel else f"{stage}/acc_multi_genre"
        metrics = {
            "": self._stage_metrics(stage),
            f"{stage}/loss": getattr(self, f"{stage}_loss"),
            top1_any_true: getattr(self, f"{stage}_acc_multi_genre", None),
        }
        metrics = {name: metric for name, metric in metrics.items() if metric is not None}
        updated = any_rank([_update_called(metric) for metric in metrics.values()])
        values: dict[str, torch.Tensor] = {}
        for (name, metric), anywhere in zip(metrics.items(), updated, strict=True):
            if anywhere:
                result = metric.compute()
                values.update(result if isinstance(result, dict) else {name: result})
            metric.reset()
        # sync_dist=False: the values are global already, and a lazy sync is what broke DDP (distributed.py).
        self.log_dict(values, prog_bar=stage in ("train", "val"), sync_dist=False)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")
        if self.multilabel:
            self._tune_thresholds()

    def _tune_thresholds(self) -> None:
        """Per-genre thresholds that maximise F1 on this validation epoch (every rank's images; every
        rank takes part in the same collectives, whatever its data: see distributed.py). Not on the
        sanity check's few batches. Used from the next epoch on, and by the test of the checkpoint."""
        (updated,) = any_rank([self.val_curve.update_called])
        if updated and not self.trainer.sanity_checking:
            precision, recall, thresholds = self.val_curve.compute()
            self.thresholds.copy_(tune_thresholds(precision, recall, thresholds).to(self.thresholds))
            values = {f"val/threshold/{c}": t for c, t in zip(self.classes, self.thresholds.tolist(), strict=True)}
            self.log_dict(values, sync_dist=False)
        self.val_curve.reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")[0]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        """Per-image probabilities, targets and dataset indices, for callbacks (see ``results/callback.py``)."""
        result = self._shared_step(batch, "test")
        if result is None:
            return None
        return {"probs": self.probabilities(result[1].detach()), "target": batch["target"], "index": batch["index"]}

    def configure_optimizers(self) -> Any:
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


def _check_threshold(threshold: float | None, key: str = "model.threshold") -> None:
    if threshold is not None and (isinstance(threshold, bool) or not 0 < float(threshold) < 1):
        raise ConfigError(key, threshold, "null (per-genre thresholds tuned on val) or a probability between 0 and 1")
