"""Single-label losses for uneven genres: class weights and focal loss, for hard and soft targets.

One formula serves every case, so a run weighs its posters alike with and without Mixup/CutMix and
label smoothing: for a target distribution ``q`` (one-hot, smoothed, or Mixup's mix of two),

    loss_i = - sum_c  w_c * q_ic * (1 - p_ic) ** gamma * log p_ic

averaged over the batch (not divided by the batch's sum of weights, as PyTorch's ``weight=`` mean
does: the weights are normalised instead, see ``resolve_class_weights``, so a batch's loss keeps the
unweighted scale on average). With ``gamma = 0`` it is the class-weighted cross-entropy, and for
hard targets each term equals ``F.cross_entropy(weight=w, label_smoothing=..., reduction="none")``;
with ``gamma > 0`` it is the focal loss of Lin et al. (2017), its modulating factor applied per genre
so that soft targets are covered too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

LOSSES = ("cross_entropy", "focal")
AUTO = "auto"


def check_loss(loss: str, focal_gamma: Any) -> float:
    """``model.loss`` and ``model.focal_gamma`` checked; the focal exponent (0 for cross-entropy)."""
    if loss not in LOSSES:
        raise ConfigError("model.loss", loss, f"one of {', '.join(LOSSES)}")
    if isinstance(focal_gamma, bool) or not isinstance(focal_gamma, int | float) or not 0 <= focal_gamma < math.inf:
        raise ConfigError("model.focal_gamma", focal_gamma, "a number >= 0 (2.0 is the usual focal loss)")
    return float(focal_gamma) if loss == "focal" else 0.0


def check_class_weights(spec: Any, classes: Sequence[str]) -> list[float] | None:
    """``model.class_weights`` checked: None (no weights), ``auto`` (resolved from the training split
    later, by ``resolve_class_weights``), or ``{genre: weight}`` (returned per class in class order;
    a genre not named weighs 1)."""
    if spec is None or spec == AUTO:
        return None
    valid = f"null, auto, or {{genre: weight}} with genres from {list(classes)} and weights > 0"
    if not isinstance(spec, Mapping):
        raise ConfigError("model.class_weights", spec, valid)
    unknown = sorted(set(map(str, spec)) - set(classes))
    if unknown:
        raise ConfigError("model.class_weights", spec, f"{valid} (no genre {unknown[0]!r})")
    for genre, weight in spec.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < math.inf:
            raise ConfigError(f"model.class_weights.{genre}", weight, "a positive number")
    return [float(spec.get(c, 1.0)) for c in classes]


def inverse_frequency_weights(counts: Sequence[int], classes: Sequence[str]) -> list[float]:
    """``auto``: each genre weighs ``n / (C * n_c)`` (training posters ``n``, genres ``C``, the genre's
    posters ``n_c``; scikit-learn's ``balanced``): inverse frequency, normalised so that the mean
    weight over the training posters is 1 (every genre then carries the same total weight)."""
    missing = [c for c, n in zip(classes, counts, strict=True) if n <= 0]
    if missing:
        raise ConfigError("model.class_weights", AUTO, f"null or {{genre: weight}}: no training poster of {missing}")
    total = sum(counts)
    return [total / (len(classes) * n) for n in counts]


def soft_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    focal_gamma: float = 0.0,
) -> torch.Tensor:
    """The batch mean of ``- sum_c w_c q_c (1 - p_c)^gamma log p_c`` for target distributions ``targets`` (N, C)."""
    log_p = logits.float().log_softmax(dim=-1)
    terms = -targets.float() * log_p
    if focal_gamma:
        terms = terms * (1 - log_p.exp()).clamp(min=0) ** focal_gamma
    if class_weights is not None:
        terms = terms * class_weights.to(terms)
    return terms.sum(dim=-1).mean()


def smoothed_one_hot(targets: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """Class indices as the distributions ``nn.CrossEntropyLoss(label_smoothing=...)`` trains towards."""
    one_hot = torch.nn.functional.one_hot(targets, num_classes).float()
    return one_hot * (1 - label_smoothing) + label_smoothing / num_classes
