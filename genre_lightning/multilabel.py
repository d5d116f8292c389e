"""Multi-label pieces of ``GenreClassifier`` (``data.task=multilabel``): the torchmetrics it logs,
per-genre decision thresholds tuned on the validation split, and Mixup for multi-hot targets.

A genre is predicted when its sigmoid probability exceeds that genre's threshold. torchmetrics'
threshold-based metrics take one threshold for every genre, so they are fed probabilities moved so
that each genre's own threshold lands on 0.5 (:func:`at_thresholds`); average precision, which ranks
the probabilities, gets them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.data import Mixup
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    MultilabelAveragePrecision,
    MultilabelExactMatch,
    MultilabelF1Score,
    MultilabelHammingDistance,
    MultilabelPrecision,
    MultilabelRecall,
)

DEFAULT_THRESHOLD = 0.5  # before the first validation epoch has tuned any


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


def decide(probabilities: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """The predicted genre sets: a boolean (N, C) of probabilities above their genre's threshold."""
    return probabilities > thresholds.to(probabilities)


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
