"""GenreClassifier: one LightningModule around any timm backbone."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from hydra.utils import instantiate
from lightning.pytorch import LightningModule
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from genre_lightning.backbone import create_backbone, resolve_data_config
from genre_lightning.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.01}
# Bins of the expected calibration error (torchmetrics' default); the reliability diagram uses the same.
ECE_BINS = 15


def to_plain(value: Any) -> Any:
    """OmegaConf containers to plain dicts/lists, so checkpoints load with ``weights_only=True``."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class GenreClassifier(LightningModule):
    """A timm backbone with a ``len(classes)``-way head, torchmetrics, and optimiser/scheduler from config.

    Args:
        backbone: any ``timm`` model name.
        classes: genre names, in label-index order.
        pretrained: load ImageNet weights from the Hugging Face Hub.
        weights: a local timm-format weights file (wins over ``pretrained``).
        optimizer: a Hydra config with ``_target_`` (the parameters are passed in here).
        scheduler: a Hydra config for ``torch.optim.lr_scheduler`` (optimizer is added here), or None.
        scheduler_interval: ``epoch`` or ``step``.
        label_smoothing: cross-entropy label smoothing.
        drop_rate: dropout before the classifier (timm's ``drop_rate``).
        data_config: overrides of timm's data config (``input_size``, ``crop_pct``, ...); None keeps timm's.
        channels_last: run the network in channels-last memory format.
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
    ) -> None:
        super().__init__()
        classes, optimizer, scheduler, data_config = map(to_plain, (classes, optimizer, scheduler, data_config))
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
            }
        )
        self.classes = list(classes)
        self.net = create_backbone(backbone, len(self.classes), pretrained, weights, drop_rate=drop_rate)
        self.data_config = resolve_data_config(self.net, data_config)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.train_metrics = self._metrics("train/")
        self.val_metrics = self._metrics("val/")
        self.test_metrics = self._metrics("test/", per_class=True)
        self.failed_items: list[tuple[int, str]] = []

    def _metrics(self, prefix: str, per_class: bool = False) -> MetricCollection:
        n = len(self.classes)
        metrics: dict[str, Any] = {
            "acc": MulticlassAccuracy(n, average="micro"),
            "f1_macro": MulticlassF1Score(n, average="macro"),
        }
        if per_class:
            metrics["acc_top2"] = MulticlassAccuracy(n, top_k=min(2, n), average="micro")
            metrics["precision_macro"] = MulticlassPrecision(n, average="macro")
            metrics["recall_macro"] = MulticlassRecall(n, average="macro")
            metrics["ece"] = MulticlassCalibrationError(n, n_bins=ECE_BINS, norm="l1")
            for name, metric in (
                ("precision", MulticlassPrecision),
                ("recall", MulticlassRecall),
                ("f1", MulticlassF1Score),
            ):
                metrics[name] = ClasswiseWrapper(metric(n, average=None), labels=self.classes, prefix=f"{name}/")
        return MetricCollection(metrics, prefix=prefix)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> GenreClassifier:
        """Load for evaluation or prediction: safe unpickling, and no weight download (the
        checkpoint holds all weights)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError("ckpt_path", str(path), "an existing .ckpt file written by genre-train")
        model = cls.load_from_checkpoint(
            path, map_location=map_location, weights_only=True, pretrained=False, weights=None
        )
        return model.eval()

    def _stage_metrics(self, stage: str) -> MetricCollection:
        return getattr(self, f"{stage}_metrics")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # A BatchNorm whose weights are frozen also keeps its running statistics: frozen layers
        # compute what they computed when they were trained. Done per batch because Lightning
        # restores each module's train/eval flag after every validation run.
        for module in self.net.modules():
            if (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                and module.training
                and module.weight is not None
                and not module.weight.requires_grad
            ):
                module.eval()

    def _shared_step(self, batch: dict[str, Any], stage: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(loss, logits) of a batch, with the stage's metrics updated; None for a batch without images."""
        if batch["failed"]:
            self.failed_items.extend(batch["failed"])
        images, targets = batch["image"], batch["target"]
        if targets.numel() == 0:
            return None
        logits = self(images)
        loss = self.criterion(logits, targets)
        self._stage_metrics(stage).update(logits, targets)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=on_step,
            batch_size=targets.numel(),
            sync_dist=not on_step,
        )
        return loss, logits

    def _log_epoch_metrics(self, stage: str) -> None:
        # compute() covers every batch of the epoch and syncs across DDP ranks itself.
        values = self._stage_metrics(stage).compute()
        self.log_dict(values, prog_bar=stage == "val", sync_dist=True)  # already synced; this silences a warning
        self._stage_metrics(stage).reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        result = self._shared_step(batch, "train")
        return result[0] if result else None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        """Per-image probabilities, targets and dataset indices, for callbacks (see ``artifacts.py``)."""
        result = self._shared_step(batch, "test")
        if result is None:
            return None
        return {"probs": result[1].detach().softmax(dim=-1), "target": batch["target"], "index": batch["index"]}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).softmax(dim=-1)

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
