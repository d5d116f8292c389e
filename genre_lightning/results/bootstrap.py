"""Confidence intervals by the bootstrap, resampling posters by duplicate group.

Copies of one poster (a duplicate group: byte-identical or near-identical files, possibly filed under
two genres) are not independent evidence: a model that gets one copy right gets the other right too.
Each bootstrap sample therefore draws duplicate groups with replacement, and every poster counts as
often as its group was drawn. Every metric is computed from those per-poster weights for all samples
at once (one matrix product per metric), so thousands of samples take well under a second.

The same weights serve several models scored on the same posters: a paired comparison
(``results/paired.py``) resamples both with one draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genre_lightning.training.metrics import ECE_BINS

SAMPLES = 2000  # bootstrap samples: the 2.5th/97.5th percentiles move by ~0.1 points between seeds
LEVEL = 0.95


def group_weights(groups: Sequence[str], samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """``(samples, posters)``: how often each poster counts in each bootstrap sample (its group's draws)."""
    _, group_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    n_groups = int(group_of.max()) + 1 if len(group_of) else 0
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(samples, n_groups))
    rows = np.repeat(np.arange(samples), n_groups)
    counts = np.bincount(rows * n_groups + draws.ravel(), minlength=samples * n_groups)
    return counts.reshape(samples, n_groups)[:, group_of].astype(float)


@dataclass(frozen=True)
class Scores:
    """One model's predictions of the same posters: ``labels`` (n,) true genre indices and
    ``probabilities`` (runs, n, classes), one row block per run (several seeds of one recipe)."""

    labels: np.ndarray
    probabilities: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=2)

    @property
    def correct(self) -> np.ndarray:
        """(runs, n): top-1 right."""
        return (self.predicted == self.labels[None]).astype(float)


def accuracy(scores: Scores, weights: np.ndarray) -> np.ndarray:
    """Top-1 accuracy for each row of ``weights`` (mean over runs)."""
    return _mean_over_runs(scores.correct, weights)


def top2_accuracy(scores: Scores, weights: np.ndarray) -> np.ndarray:
    top2 = np.argsort(-scores.probabilities, axis=2, kind="stable")[:, :, :2]
    hits = (top2 == scores.labels[None, :, None]).any(axis=2).astype(float)
    return _mean_over_runs(hits, weights)


def f1_per_genre(scores: Scores, weights: np.ndarray) -> np.ndarray:
    """``(samples, classes)`` F1 of each genre (mean over runs); 0 where a genre is neither true nor predicted."""
    classes = scores.probabilities.shape[2]
    result = np.zeros((weights.shape[0], classes))
    for predicted in scores.predicted:
        for c in range(classes):
            truth, chosen = scores.labels == c, predicted == c
            tp = weights @ (truth & chosen)
            wrong = weights @ (truth ^ chosen)  # false positives plus false negatives
            denominator = 2 * tp + wrong
            result[:, c] += np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return result / len(scores.predicted)


def macro_f1(scores: Scores, weights: np.ndarray) -> np.ndarray:
    return f1_per_genre(scores, weights).mean(axis=1)


def expected_calibration_error(scores: Scores, weights: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """ECE over ``bins`` equal-width bins of top-1 confidence, as ``test/ece`` (mean over runs)."""
    edges = np.linspace(0, 1, bins + 1)
    total = weights.sum(axis=1)
    result = np.zeros(weights.shape[0])
    for probabilities, correct in zip(scores.probabilities, scores.correct, strict=True):
        confidence = probabilities.max(axis=1)
        index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
        members = np.eye(bins)[index]  # (n, bins)
        gap = weights @ (members * (correct - confidence)[:, None])
        result += np.abs(gap).sum(axis=1) / total
    return result / len(scores.probabilities)


METRICS = {
    "top1": accuracy,
    "top2": top2_accuracy,
    "f1_macro": macro_f1,
    "ece": expected_calibration_error,
}


@dataclass(frozen=True)
class Interval:
    """A point estimate (on the posters as they are) and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        return f"{self.estimate * scale:.{digits}f} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"


def interval(estimate: float, samples: np.ndarray, level: float = LEVEL) -> Interval:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high))


def metric_intervals(scores: Scores, weights: np.ndarray, classes: Sequence[str]) -> dict[str, Interval]:
    """Top-1, top-2, macro-F1, ECE and each genre's F1 with their intervals (``weights`` from
    :func:`group_weights`; the estimates use every poster once)."""
    once = np.ones((1, len(scores.labels)))
    result = {name: interval(metric(scores, once)[0], metric(scores, weights)) for name, metric in METRICS.items()}
    per_genre, per_genre_once = f1_per_genre(scores, weights), f1_per_genre(scores, once)[0]
    for c, name in enumerate(classes):
        result[f"f1/{name}"] = interval(per_genre_once[c], per_genre[:, c])
    return result


def _mean_over_runs(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``values`` (runs, n) weighted per sample: (samples,), averaged over the runs."""
    return (weights @ values.T).mean(axis=1) / weights.sum(axis=1)
