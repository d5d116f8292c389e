"""The search's paired pruning rule: its interval level shares the 5% over the looks after each fold, so
a recipe equal to the best is stopped less often than at 95% per look, and a clearly worse one still is."""

import numpy as np
import pandas as pd
import pytest

from genre_lightning.results.bootstrap import Scores
from genre_lightning.results.search_scores import paired_gap, pruning_level, replay_pruning

GENRES = ["Action", "Comedy", "Horror", "Romance"]


def test_the_looks_share_the_five_percent():
    assert pruning_level(5) == pytest.approx(0.9875)
    assert pruning_level(3) == pytest.approx(0.975)
    assert pruning_level(5, min_folds=3) == pytest.approx(0.975)
    assert pruning_level(2) == pytest.approx(0.95)


def _noisy_scores(rng: np.random.Generator, labels: np.ndarray) -> Scores:
    logits = rng.normal(size=(len(labels), len(GENRES)))
    logits[np.arange(len(labels)), labels] += 1.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Scores(labels, probabilities[None])  # one run


def test_an_equal_recipe_is_stopped_less_often_at_the_shared_level_than_at_95():
    # Two recipes of equal skill (independent noise on the same 180 posters): each draw is one look.
    rng = np.random.default_rng(0)
    stopped = {0.95: 0, pruning_level(5): 0}
    for _ in range(200):
        labels = rng.integers(0, len(GENRES), 180)
        a, b = _noisy_scores(rng, labels), _noisy_scores(rng, labels)
        groups = [str(i) for i in range(len(labels))]
        for level in stopped:
            stopped[level] += paired_gap(a, b, groups, "logloss", samples=400, level=level).clearly_behind
    assert stopped[pruning_level(5)] < stopped[0.95]
    assert stopped[0.95] <= 20  # about 2.5% of 200 looks, with room for chance


def _folds(rng: np.random.Generator, boost: float) -> list[pd.DataFrame]:
    frames = []
    for fold in range(3):
        labels = rng.integers(0, len(GENRES), 120)
        logits = rng.normal(size=(len(labels), len(GENRES)))
        logits[np.arange(len(labels)), labels] += boost
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frame = pd.DataFrame({"file_path": [f"f{fold}_{i}.jpg" for i in range(len(labels))]})
        frame["label"] = [GENRES[k] for k in labels]
        for k, genre in enumerate(GENRES):
            frame[f"p_{genre}"] = p[:, k]
        frames.append(frame)
    return frames


def test_the_replayed_rule_still_stops_a_clearly_worse_trial_after_its_first_fold():
    good, worse = _folds(np.random.default_rng(1), 3.0), _folds(np.random.default_rng(1), 0.0)
    (first, second) = replay_pruning({0: good, 1: worse}, {}, "logloss", samples=400)
    assert first.stopped_after is None and second.stopped_after == 1 and not second.finished_ahead
