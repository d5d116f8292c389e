"""Multi-label helpers of the training task: thresholds tuned on the validation curve, and timm's
Mixup/CutMix for multi-hot targets (``training/tasks.py``'s ``MultiLabelTask`` uses both)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.data import Mixup

from genre_lightning.models.prediction_task import DEFAULT_THRESHOLD


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
