"""The bootstrap and the paired comparison, against straightforward recomputations: posters resampled
one group at a time (a Python loop), scored with scikit-learn, McNemar's test counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

from genre_lightning.results.bootstrap import (
    Scores,
    accuracy,
    expected_calibration_error,
    group_weights,
    interval,
    macro_f1,
    metric_intervals,
    top2_accuracy,
)
from genre_lightning.results.paired import NOT_DISTINGUISHABLE, compare

CLASSES = ["Action", "Comedy", "Horror", "Romance"]


def predictions(rng: np.random.Generator, labels: np.ndarray, skill: float) -> np.ndarray:
    """Probabilities that put ``skill`` extra weight on the true genre."""
    logits = rng.normal(size=(len(labels), 4))
    logits[np.arange(len(labels)), labels] += skill
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence, predicted = probabilities.max(1), probabilities.argmax(1)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += (
                members.sum()
                / len(labels)
                * abs((predicted[members] == labels[members]).mean() - confidence[members].mean())
            )
    return total


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=90)
    # 70 single posters and 10 groups of two copies (the same genre, like byte-identical files)
    groups = [f"s{i}" for i in range(70)] + [f"g{i // 2}" for i in range(20)]
    labels[70:] = np.repeat(labels[70::2], 2)
    return labels, groups, predictions(rng, labels, 1.5), predictions(rng, labels, 0.3)


def test_each_sample_is_the_metric_on_the_drawn_groups_posters(data):
    labels, groups, good, _ = data
    weights = group_weights(groups, samples=40, seed=5)
    # The same draws, replayed as explicit lists of posters.
    names = sorted(set(groups))
    draws = np.random.default_rng(5).integers(0, len(names), size=(40, len(names)))
    members = {name: [i for i, g in enumerate(groups) if g == name] for name in names}
    scores = Scores(labels, good[None])
    intervals_input = metric_intervals(scores, weights, CLASSES)

    got = {
        "acc": accuracy(scores, weights),
        "f1": macro_f1(scores, weights),
        "top2": top2_accuracy(scores, weights),
        "ece": expected_calibration_error(scores, weights),
    }
    for s, draw in enumerate(draws):
        posters = [i for k in draw for i in members[names[k]]]
        y, p = labels[posters], good[posters]
        assert got["acc"][s] == pytest.approx(accuracy_score(y, p.argmax(1)))
        assert got["f1"][s] == pytest.approx(
            f1_score(y, p.argmax(1), average="macro", labels=range(4), zero_division=0)
        )
        assert got["top2"][s] == pytest.approx(top_k_accuracy_score(y, p, k=2, labels=range(4)))
        assert got["ece"][s] == pytest.approx(ece(p, y))
    assert intervals_input["top1"].estimate == pytest.approx(accuracy_score(labels, good.argmax(1)))
    assert intervals_input["f1/Horror"].estimate == pytest.approx(
        f1_score(labels, good.argmax(1), average=None, labels=range(4))[2]
    )


def test_copies_of_one_poster_are_drawn_together(data):
    _, groups, _, _ = data
    weights = group_weights(groups, samples=200, seed=0)
    assert np.array_equal(weights[:, 70::2], weights[:, 71::2])  # each pair: always the same count
    assert (weights.sum(axis=1) > 0).all()


def test_interval_is_the_percentile_range():
    samples = np.arange(1001) / 1000
    result = interval(0.5, samples)
    assert (result.low, result.high) == pytest.approx((0.025, 0.975))
    assert result.contains(0.5) and not result.contains(0.99)


def test_paired_comparison_separates_a_worse_model_and_not_a_copy(data):
    labels, groups, good, bad = data
    weights = group_weights(groups, samples=2000, seed=0)
    worse = compare(Scores(labels, bad[None]), Scores(labels, good[None]), weights)
    right_good, right_bad = good.argmax(1) == labels, bad.argmax(1) == labels
    only_bad, only_good = int((right_bad & ~right_good).sum()), int((right_good & ~right_bad).sum())
    assert (worse.only_model_right, worse.only_reference_right) == (only_bad, only_good)
    assert worse.p_value == pytest.approx(binomtest(only_bad, only_bad + only_good, 0.5).pvalue)
    assert worse.top1.estimate == pytest.approx(right_bad.mean() - right_good.mean())
    assert worse.distinguishable and worse.verdict == "worse" and worse.top1.high < 0

    # The good model against itself with a few answers changed: indistinguishable.
    nudged = good.copy()
    nudged[:3] = nudged[:3, ::-1]
    same = compare(Scores(labels, nudged[None]), Scores(labels, good[None]), weights)
    assert same.verdict == NOT_DISTINGUISHABLE and same.top1.contains(0.0) and same.p_value > 0.05
