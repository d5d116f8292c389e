"""The torchmetrics each stage logs, for one genre per poster and for any number of genres.

Single-label: accuracy and macro F1 always; top-2, macro precision and recall, calibration error and
per-genre precision/recall/F1 for the test. Multi-label: mAP, micro/macro F1, subset accuracy and
Hamming loss; per-genre AP, precision, recall and F1 for the test.

A multi-label genre is predicted when its sigmoid probability exceeds that genre's threshold.
torchmetrics' threshold-based metrics take one threshold for every genre, so they are fed
probabilities moved so that each genre's own threshold lands on 0.5 (:func:`at_thresholds`); average
precision, which ranks the probabilities, gets them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelAveragePrecision,
    MultilabelExactMatch,
    MultilabelF1Score,
    MultilabelHammingDistance,
    MultilabelPrecision,
    MultilabelRecall,
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


def multilabel_metrics(classes: Sequence[str], prefix: str, detailed: bool = False) -> MetricCollection:
    """``<prefix>map`` (macro average precision), micro/macro F1, subset accuracy and Hamming loss;
    with ``detailed`` also per-genre AP, precision, recall and F1 (``test/ap/Horror``...).

    Every metric but AP expects the output of :func:`at_thresholds`."""
    n = len(classes)
    metrics: dict[str, Any] = {
        "map": MultilabelAveragePrecision(n, average="macro"),
        "f1_macro": MultilabelF1Score(n, average="macro"),
        "f1_micro": MultilabelF1Score(n, average="micro"),
        "subset_acc": MultilabelExactMatch(n),
        "hamming": MultilabelHammingDistance(n, average="micro"),
    }
    if detailed:
        metrics["ap"] = ClasswiseWrapper(
            MultilabelAveragePrecision(n, average=None), labels=list(classes), prefix="ap/"
        )
        for name, metric in (
            ("precision", MultilabelPrecision),
            ("recall", MultilabelRecall),
            ("f1", MultilabelF1Score),
        ):
            metrics[name] = ClasswiseWrapper(metric(n, average=None), labels=list(classes), prefix=f"{name}/")
    # compute_groups=False: update_multilabel_metrics updates each member with its own input.
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)


def update_multilabel_metrics(
    metrics: MetricCollection, probabilities: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor
) -> None:
    """Update every metric of :func:`multilabel_metrics`: AP on the probabilities, the others on the
    decisions at the per-genre ``thresholds``."""
    targets = targets.long()
    decided = at_thresholds(probabilities, thresholds)
    for name, metric in metrics.items(keep_base=True):
        ranks = name.endswith(("map", "ap"))
        metric.update(probabilities if ranks else decided, targets)


def at_thresholds(probabilities: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Values that exceed 0.5 exactly where ``probabilities`` exceed each genre's threshold.

    Piecewise-linear, so the comparison is exact: [0, t] maps onto [0, 0.5] and [t, 1] onto [0.5, 1]."""
    t = thresholds.to(probabilities).clamp(1e-6, 1 - 1e-6)
    below = probabilities / t * 0.5
    above = 0.5 + (probabilities - t) / (1 - t) * 0.5
    return torch.where(probabilities > t, above.clamp(min=0.5 + 1e-7), below.clamp(max=0.5))
