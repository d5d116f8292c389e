"""The torchmetrics every stage logs: accuracy and macro F1 always; top-2, macro precision and
recall, calibration error and per-genre precision/recall/F1 for the test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (and its diagram)


def classification_metrics(classes: Sequence[str], prefix: str, detailed: bool = False) -> MetricCollection:
    """Metrics named ``<prefix><name>``, e.g. ``test/acc``, ``test/recall/Horror``."""
    n = len(classes)
    metrics: dict[str, Any] = {
        "acc": MulticlassAccuracy(n, average="micro"),
        "f1_macro": MulticlassF1Score(n, average="macro"),
    }
    if detailed:
        metrics["acc_top2"] = MulticlassAccuracy(n, top_k=min(2, n), average="micro")
        metrics["precision_macro"] = MulticlassPrecision(n, average="macro")
        metrics["recall_macro"] = MulticlassRecall(n, average="macro")
        metrics["ece"] = MulticlassCalibrationError(n, n_bins=ECE_BINS, norm="l1")
        for name, metric in (
            ("precision", MulticlassPrecision),
            ("recall", MulticlassRecall),
            ("f1", MulticlassF1Score),
        ):
            metrics[name] = ClasswiseWrapper(metric(n, average=None), labels=list(classes), prefix=f"{name}/")
    return MetricCollection(metrics, prefix=prefix)
