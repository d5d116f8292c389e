"""Paired comparisons: two models scored on the same posters.

The difference of two accuracies measured on the same posters is much more certain than either
accuracy alone (both models get the easy posters right; only the posters where they disagree say
which is better), so recipes are compared by:

* a paired bootstrap interval of the difference: both models resampled with the same draw of
  duplicate groups (``results/bootstrap.py``);
* McNemar's exact test: of the posters where exactly one of the two is right, is either side's share
  more than chance (a two-sided binomial test at 1/2)? With several runs per recipe (seeds), it is
  the sign test of each poster's mean correctness, which is McNemar's test for one run each.

A difference whose interval contains 0 is "not distinguishable": the ranking of those two recipes
is not supported by these posters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from genre_lightning.results.bootstrap import Interval, Scores, accuracy, interval, macro_f1

NOT_DISTINGUISHABLE = "not distinguishable"


@dataclass(frozen=True)
class Comparison:
    """``model - reference`` on the same posters: top-1 and macro-F1 differences with paired bootstrap
    intervals, McNemar's p-value, and the posters only one of the two gets right."""

    top1: Interval
    f1_macro: Interval
    p_value: float
    only_model_right: int
    only_reference_right: int

    @property
    def distinguishable(self) -> bool:
        return not self.top1.contains(0.0)

    @property
    def verdict(self) -> str:
        if not self.distinguishable:
            return NOT_DISTINGUISHABLE
        return "better" if self.top1.estimate > 0 else "worse"


def compare(model: Scores, reference: Scores, weights: np.ndarray) -> Comparison:
    """``model`` against ``reference`` (same posters in the same order; ``weights`` from ``group_weights``)."""
    if not np.array_equal(model.labels, reference.labels):
        raise ValueError("a paired comparison needs the same posters, in the same order, for both models")
    once = np.ones((1, len(model.labels)))

    def difference(metric) -> Interval:
        return interval(
            metric(model, once)[0] - metric(reference, once)[0], metric(model, weights) - metric(reference, weights)
        )

    mine, theirs = model.correct.mean(axis=0), reference.correct.mean(axis=0)
    only_model, only_reference = int((mine > theirs).sum()), int((theirs > mine).sum())
    return Comparison(
        top1=difference(accuracy),
        f1_macro=difference(macro_f1),
        p_value=mcnemar_exact(only_model, only_reference),
        only_model_right=only_model,
        only_reference_right=only_reference,
    )


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """McNemar's exact two-sided p-value from the discordant counts (1.0 when there are none)."""
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    return float(binomtest(only_a, discordant, 0.5).pvalue)
