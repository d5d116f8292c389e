"""What "one genre per poster" and "any number of genres per poster" mean: two task objects.

The LightningModule chooses one of them once (``model.task``: ``single`` or ``multilabel``) and asks
it for everything that differs between the two: the loss, probabilities and decisions, the metrics
and how they are updated, Mixup of the targets, the top-1 "any true genre" hits, and the state a
task keeps in the checkpoint (the multi-label decision thresholds, and the single-label temperature,
both tuned on the validation split).
Probabilities, decisions and that state are the prediction half (``models/prediction_task.py``),
which these classes extend with training; the predictor (``inference/``) builds the prediction half
alone, so training, evaluation, prediction and export decide alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassCalibrationError, MultilabelPrecisionRecallCurve

from genre_lightning.models.prediction_task import (
    DEFAULT_THRESHOLD,
    MultiLabelPrediction,
    PredictionTask,
    SingleLabelPrediction,
    check_task_options,
)
from genre_lightning.training import losses
from genre_lightning.training.calibration import ValidationLogits, calibration_error, fit_temperature
from genre_lightning.training.metrics import (
    ECE_BINS,
    classification_metrics,
    multilabel_metrics,
    update_multilabel_metrics,
)
from genre_lightning.utils.distributed import any_rank
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)


class GenreTask(PredictionTask):
    """The part of the model that depends on the kind of labels: the prediction half, and training."""

    #: the name of the top-1 "any true genre" accuracy: ``<stage>/<any_true_metric>``
    any_true_metric = "acc_multi_genre"

    def metrics(self, prefix: str, detailed: bool = False) -> MetricCollection:
        raise NotImplementedError

    def targets(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["target"]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mixup(self, options: Mapping[str, Any] | None, label_smoothing: float) -> Mixup | None:
        """timm's Mixup/CutMix for these targets, or None without options."""
        return Mixup(**options, label_smoothing=label_smoothing, num_classes=len(self.classes)) if options else None

    def mix(self, mixup: Mixup, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mixup(images, targets)

    def mixed_loss(self, logits: torch.Tensor, mixed_targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update_metrics(self, metrics: MetricCollection, probabilities: torch.Tensor, targets: torch.Tensor) -> None:
        metrics.update(probabilities, targets)

    def any_true_hits(self, logits: torch.Tensor, batch: Mapping[str, Any], stage: str) -> torch.Tensor | None:
        """Per image, whether the top genre is one of its true genres (None: not measured here)."""
        return None

    def uncalibrated_metric(self) -> Metric | None:
        """A test metric of the probabilities before calibration (``uncalibrated_probabilities``), or None."""
        return None

    def uncalibrated_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return self.probabilities(logits)

    def fit_setup(self, datamodule: Any) -> None:
        """Before training: anything the task derives from the training split."""

    def observe_validation(self, logits: torch.Tensor, probabilities: torch.Tensor, targets: torch.Tensor) -> None:
        """A validation batch, for state tuned on the validation split."""

    def after_validation(self, sanity_checking: bool) -> dict[str, float]:
        """At the end of a validation epoch, on every rank: tune what is tuned; the values to log."""
        return {}

    def validation_state(self, build: Callable[[], Metric]) -> Metric:
        """The metric that gathers a validation epoch (over DDP ranks), built on first use on the task's
        device: a predictor never validates, so it never builds one."""
        if "val_state" not in self._modules:
            device = next(self.buffers()).device
            self.add_module("val_state", build().to(device))
        return self._modules["val_state"]


class SingleLabelTask(SingleLabelPrediction, GenreTask):
    """One genre per poster: softmax over the genres, cross-entropy (with label smoothing), top-1 decisions.

    The probabilities are ``softmax(logits / T)`` (temperature scaling, ``training/calibration.py``):
    ``T`` is a buffer, so checkpoints, the predictor and exports carry it. With ``temperature=None`` it
    is fitted on the validation split's logits after every validation epoch (the checkpoint of an epoch
    holds the ``T`` of that epoch's weights); a number fixes it (1.0: no scaling), e.g. for a refit
    without a validation split. The loss, and so training, never sees ``T``.

    For uneven genres (``training/losses.py``): ``class_weights`` (None, ``auto``: inverse frequency in
    the training split, resolved by ``fit_setup``, or ``{genre: weight}``) and ``loss="focal"`` (with
    ``focal_gamma``) weigh the loss, for hard and Mixup's soft targets alike.
    """

    def __init__(
        self,
        classes: Sequence[str],
        label_smoothing: float = 0.0,
        temperature: float | None = None,
        class_weights: str | Mapping[str, float] | None = None,
        loss: str = "cross_entropy",
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__(classes, temperature)
        self.focal_gamma = losses.check_loss(loss, focal_gamma)
        self.class_weight_spec = class_weights
        weights = losses.check_class_weights(class_weights, self.classes)
        self.class_weights = torch.tensor(weights, dtype=torch.float64) if weights is not None else None
        self.label_smoothing = label_smoothing
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.soft_target_criterion = SoftTargetCrossEntropy()  # Mixup's mixed targets
        self.fits_temperature = temperature is None

    def uncalibrated_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)

    def uncalibrated_metric(self) -> Metric:
        return MulticlassCalibrationError(len(self.classes), n_bins=ECE_BINS, norm="l1")

    def validation_logits(self) -> Metric:
        return self.validation_state(ValidationLogits)

    def observe_validation(self, logits: torch.Tensor, probabilities: torch.Tensor, targets: torch.Tensor) -> None:
        if self.fits_temperature:
            self.validation_logits().update(logits, targets)

    def after_validation(self, sanity_checking: bool) -> dict[str, float]:
        """The temperature that fits this validation epoch's logits best (every rank's images; every rank
        takes part in the same collectives: utils/distributed.py), with the validation ECE before and
        after. Not on the sanity check's few batches."""
        if not self.fits_temperature:
            return {}
        val_logits = self.validation_logits()
        (updated,) = any_rank([val_logits.update_called])
        values: dict[str, float] = {}
        if updated and not sanity_checking:
            if not val_logits.update_called:  # no readable image here: an empty (0, C) part, so every
                # rank gathers tensors of the same rank and dtype (else gloo fails on a size mismatch)
                empty = torch.empty(0, len(self.classes), device=self.temperature.device)
                val_logits.update(empty, torch.empty(0, dtype=torch.long, device=empty.device))
            logits, targets = val_logits.compute()
            fitted = fit_temperature(logits, targets)
            if fitted is None:
                log.warning("No finite temperature fits this validation split (every poster right by a margin): T=1")
            temperature = fitted or 1.0
            self.temperature.fill_(temperature)
            values = {
                "val/temperature": temperature,
                "val/ece_uncalibrated": calibration_error(logits.softmax(dim=-1), targets),
                "val/ece": calibration_error((logits / temperature).softmax(dim=-1), targets),
            }
        val_logits.reset()
        return values

    def metrics(self, prefix: str, detailed: bool = False) -> MetricCollection:
        return classification_metrics(self.classes, prefix, detailed)

    def reweighted(self) -> bool:
        """Whether the loss is class-weighted or focal (else the plain cross-entropy)."""
        return self.class_weight_spec is not None or self.focal_gamma > 0

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.reweighted():
            soft = losses.smoothed_one_hot(targets, len(self.classes), self.label_smoothing)
            return self.mixed_loss(logits, soft)
        return self.criterion(logits, targets)

    def mixed_loss(self, logits: torch.Tensor, mixed_targets: torch.Tensor) -> torch.Tensor:
        if self.reweighted():
            return losses.soft_cross_entropy(logits, mixed_targets, self.class_weights, self.focal_gamma)
        return self.soft_target_criterion(logits, mixed_targets)

    def fit_setup(self, datamodule: Any) -> None:
        """``class_weights=auto``: inverse frequency in the training split (every DDP rank reads the
        same split, so every rank computes the same weights)."""
        if self.class_weight_spec != losses.AUTO:
            return
        if datamodule is None or not hasattr(datamodule, "train_label_counts"):
            expected = "null or {genre: weight} without the PosterDataModule"
            raise ConfigError("model.class_weights", losses.AUTO, expected)
        counts, _ = datamodule.train_label_counts()
        self.class_weights = torch.tensor(losses.inverse_frequency_weights(counts, self.classes), dtype=torch.float64)
        log.info("Class weights (auto, inverse frequency): %s", self.resolved_class_weights())

    def resolved_class_weights(self) -> dict[str, float] | None:
        """Each genre's weight in the loss (None: unweighted, or ``auto`` before ``fit_setup``)."""
        if self.class_weights is None:
            return None
        return dict(zip(self.classes, self.class_weights.tolist(), strict=True))

    def any_true_hits(self, logits: torch.Tensor, batch: Mapping[str, Any], stage: str) -> torch.Tensor | None:
        # Items that carry several genres (duplicate policy multi_genre): any of them counts.
        if "label_set" not in batch or stage == "train":
            return None
        return batch["label_set"].gather(1, logits.argmax(dim=1, keepdim=True)).float()


class MultiLabelTask(MultiLabelPrediction, GenreTask):
    """Any number of genres: a sigmoid per genre, ``BCEWithLogitsLoss`` (binary label smoothing, optional
    positive weights), and per-genre thresholds tuned for F1 on the validation split after every
    validation epoch. Its top-1 "any true genre" accuracy is the run's ``acc`` (what checkpoints monitor).

    Args:
        threshold: one decision threshold for every genre instead of the tuned ones.
        pos_weight: weigh each genre's positives by negatives / positives in the training split.
    """

    any_true_metric = "acc"

    def __init__(
        self,
        classes: Sequence[str],
        label_smoothing: float = 0.0,
        threshold: float | None = None,
        pos_weight: bool = False,
    ) -> None:
        super().__init__(classes, threshold)
        self.label_smoothing = label_smoothing
        self.pos_weight = pos_weight
        # A buffer (after the tuned thresholds), so a checkpoint carries the weights training used.
        self.register_buffer("positive_weights", torch.ones(len(self.classes)))

    def metrics(self, prefix: str, detailed: bool = False) -> MetricCollection:
        return multilabel_metrics(self.classes, prefix, detailed)

    def targets(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["target"].float()  # (N, C) multi-hot

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets * (1 - self.label_smoothing) + self.label_smoothing / 2  # towards 0.5
        weights = self.positive_weights if self.pos_weight else None
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)

    mixed_loss = loss

    def mixup(self, options: Mapping[str, Any] | None, label_smoothing: float) -> Mixup | None:
        # The multi-hot targets are mixed by mix(), with smoothing applied in the loss.
        return super().mixup(options, 0.0)

    def mix(self, mixup: Mixup, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mix_multi_hot(mixup, images, targets)

    def update_metrics(self, metrics: MetricCollection, probabilities: torch.Tensor, targets: torch.Tensor) -> None:
        update_multilabel_metrics(metrics, probabilities, targets, self.thresholds())

    def any_true_hits(self, logits: torch.Tensor, batch: Mapping[str, Any], stage: str) -> torch.Tensor | None:
        # Comparable with a single-label run's acc_multi_genre on the same posters.
        return batch["target"].float().gather(1, logits.argmax(dim=1, keepdim=True))

    def fit_setup(self, datamodule: Any) -> None:
        if not self.pos_weight:
            return
        if datamodule is None or not hasattr(datamodule, "train_label_counts"):
            raise ConfigError("model.pos_weight", True, "false unless training with the PosterDataModule")
        counts, total = datamodule.train_label_counts()
        positives = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
        self.positive_weights.copy_((total - positives).clamp(min=1) / positives)
        log.info("pos_weight per genre: %s", dict(zip(self.classes, self.positive_weights.tolist(), strict=True)))

    def validation_curve(self) -> Metric:
        # thresholds=None: the exact curve, synced over ranks
        return self.validation_state(lambda: MultilabelPrecisionRecallCurve(len(self.classes), thresholds=None))

    def observe_validation(self, logits: torch.Tensor, probabilities: torch.Tensor, targets: torch.Tensor) -> None:
        self.validation_curve().update(probabilities, targets.long())

    def after_validation(self, sanity_checking: bool) -> dict[str, float]:
        """Per-genre thresholds that maximise F1 on this validation epoch (every rank's images; every rank
        takes part in the same collectives, whatever its data: see utils/distributed.py). Not on the
        sanity check's few batches. Used from the next epoch on, and by the test of the checkpoint."""
        val_curve = self.validation_curve()
        (updated,) = any_rank([val_curve.update_called])
        values: dict[str, float] = {}
        if updated and not sanity_checking:
            precision, recall, thresholds = val_curve.compute()
            self.tuned_thresholds.copy_(tune_thresholds(precision, recall, thresholds).to(self.tuned_thresholds))
            values = {
                f"val/threshold/{c}": t for c, t in zip(self.classes, self.tuned_thresholds.tolist(), strict=True)
            }
        val_curve.reset()
        return values


def make_task(
    task: str,
    classes: Sequence[str],
    label_smoothing: float = 0.0,
    threshold: float | None = None,
    pos_weight: bool = False,
    temperature: float | None = None,
    class_weights: str | Mapping[str, float] | None = None,
    loss: str = "cross_entropy",
    focal_gamma: float = 2.0,
) -> GenreTask:
    """The task object for ``model.task``."""
    check_task_options(task, threshold, temperature)
    if task == "single":
        return SingleLabelTask(classes, label_smoothing, temperature, class_weights, loss, focal_gamma)
    if class_weights is not None:
        raise ConfigError("model.class_weights", class_weights, "null for data.task=multilabel (model.pos_weight)")
    if loss != "cross_entropy":
        raise ConfigError("model.loss", loss, "cross_entropy for data.task=multilabel (focal is single-label)")
    return MultiLabelTask(classes, label_smoothing, threshold, pos_weight)


def tune_thresholds(
    precision: Sequence[torch.Tensor], recall: Sequence[torch.Tensor], thresholds: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Per genre, the threshold that maximises F1 on a precision-recall curve (torchmetrics'
    ``MultilabelPrecisionRecallCurve`` output, already synced across DDP ranks).

    A genre is predicted for probabilities strictly above its threshold, so the value returned lies
    halfway between the best curve point's probability and the next lower one. A genre without a
    positive example keeps ``DEFAULT_THRESHOLD``."""
    tuned = []
    for p, r, t in zip(precision, recall, thresholds, strict=True):
        # curve point k (k < len(t)) predicts probabilities >= t[k]; the last point is (p=1, r=0)
        p, r, t = p[:-1].double(), r[:-1].double(), t.double()
        f1 = torch.where(p + r > 0, 2 * p * r / (p + r), torch.zeros_like(p))
        if t.numel() == 0 or not bool(torch.isfinite(f1).all()) or float(f1.max()) <= 0:
            tuned.append(DEFAULT_THRESHOLD)
            continue
        best = int(torch.argmax(f1))  # the first maximum: the lowest such threshold's index
        lower = float(t[best - 1]) if best > 0 else 0.0
        tuned.append((float(t[best]) + lower) / 2)
    return torch.tensor(tuned, dtype=torch.float32)


def mix_multi_hot(mixup: Mixup, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup/CutMix for multi-hot targets.

    timm mixes one-hot targets of integer labels, pairing image i with image N-1-i. Given the
    labels 0 for the first half of the batch and 1 for the second, each pair's two labels differ,
    and the mixed target's entry at an image's own label is exactly its mixing weight lam_i (the
    Mixup must be built with ``label_smoothing=0``); the multi-hot targets are then mixed with those
    weights. Needs an even batch, like timm's Mixup itself."""
    n = targets.shape[0]
    halves = (torch.arange(n, device=targets.device) >= n // 2).long()
    mixed_images, mixed_onehot = mixup(images, halves)
    lam = mixed_onehot.gather(1, halves[:, None])
    return mixed_images, lam * targets + (1 - lam) * targets.flip(0)
