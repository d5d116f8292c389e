"""What a cross-validated search optimises and how it decides a trial is behind.

A trial is a recipe run on every fold of one fold assignment; its fold runs' ``test_predictions.csv``
together are its out-of-fold predictions. The objective is one metric of those predictions:

* ``logloss`` (the default): the mean negative log-probability of each poster's filed genre. It uses
  the whole predicted distribution, so on a thousand posters it separates recipes that top-1 ties
  (a poster moves top-1 only when it crosses the decision boundary), and every fold run's probabilities
  are temperature-scaled on its inner validation split, so it is fair between recipes.
* ``top1`` and ``f1_macro``: what a user reads, noisier (a poster is 0.1 point of top-1 here).

The pruning rule (``paired``) compares a running trial with the best finished one on the posters of
the folds the trial has run: both were scored on the same posters, so the paired bootstrap interval of
the difference (duplicate groups resampled together, as every interval of genre-report) is narrow.
The trial is stopped when that interval lies wholly on the worse side of 0. The same rule can be
replayed on a search that ran without pruning (:func:`replay_pruning`), which measures what it would
have saved and whether it would have stopped a trial that finished ahead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from genre_lightning.results.bootstrap import (
    LEVEL,
    SAMPLES,
    Interval,
    Scores,
    accuracy,
    group_weights,
    interval,
    macro_f1,
)
from genre_lightning.results.recipes import classes_of, scores

EPSILON = 1e-12


def log_loss(scores: Scores, weights: np.ndarray) -> np.ndarray:
    """Mean negative log-probability of the filed genre, for each row of ``weights`` (mean over runs)."""
    rows = np.arange(len(scores.labels))
    nll = -np.log(np.clip(scores.probabilities[:, rows, scores.labels], EPSILON, 1.0))  # (runs, n)
    return (weights @ nll.T).mean(axis=1) / weights.sum(axis=1)


# name -> (metric over bootstrap weights, direction)
OBJECTIVES = {
    "logloss": (log_loss, "minimize"),
    "top1": (accuracy, "maximize"),
    "f1_macro": (macro_f1, "maximize"),
}


def objective_direction(metric: str) -> str:
    return OBJECTIVES[metric][1]


def out_of_fold_scores(frames: Sequence[pd.DataFrame]) -> tuple[Scores, list[str], list[str]]:
    """A trial's fold predictions together: its Scores, the posters (sorted) and the genres."""
    frame = pd.concat(frames, ignore_index=True)
    posters = sorted(frame["file_path"])
    classes = classes_of(frame)
    return scores([frame], classes, posters), posters, classes


def objective_value(scored: Scores, metric: str) -> float:
    return float(OBJECTIVES[metric][0](scored, np.ones((1, len(scored.labels))))[0])


@dataclass(frozen=True)
class Behind:
    """The paired difference ``trial - best`` in the objective (its sign: worse is positive) and
    whether its interval excludes 0 on the worse side."""

    difference: Interval
    clearly_behind: bool


def paired_gap(
    trial: Scores,
    best: Scores,
    groups: Sequence[str],
    metric: str,
    samples: int = SAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Behind:
    """How far ``trial`` is behind ``best`` on the same posters (positive: worse), with the paired
    bootstrap interval at ``level`` (both resampled with one draw of duplicate groups)."""
    if not np.array_equal(trial.labels, best.labels):
        raise ValueError("a paired gap needs the same posters, in the same order, for both trials")
    function, direction = OBJECTIVES[metric]
    sign = 1.0 if direction == "minimize" else -1.0  # worse is positive either way
    weights = group_weights(groups, samples, seed)
    once = np.ones((1, len(trial.labels)))
    estimate = sign * (function(trial, once)[0] - function(best, once)[0])
    spread = interval(estimate, sign * (function(trial, weights) - function(best, weights)), level)
    return Behind(spread, spread.low > 0)


def pruning_level(folds: int, min_folds: int = 1) -> float:
    """The interval level of the paired rule: a trial is looked at after each of folds min_folds to
    K-1, and at 95% each look would stop an equal recipe 2.5% of the time, so the looks share the 5%
    (Bonferroni): 98.75% for 5 folds, 97.5% for 3."""
    looks = max(1, folds - min_folds)
    return 1 - (1 - LEVEL) / looks


def restrict(scored: Scores, posters: Sequence[str], keep: Sequence[str]) -> Scores:
    """``scored`` (over ``posters``) on the posters ``keep`` only, in that order."""
    index = {p: i for i, p in enumerate(posters)}
    rows = [index[p] for p in keep]
    return Scores(scored.labels[rows], scored.probabilities[:, rows])


@dataclass(frozen=True)
class Replayed:
    """One finished trial under the pruning rule replayed in trial order."""

    trial: int
    stopped_after: int | None  # folds run before the rule would have stopped it (None: never)
    finished_ahead: bool  # its full out-of-fold value beat the trial it was compared with


def replay_pruning(
    trials: Mapping[int, Sequence[pd.DataFrame]],
    groups: Mapping[str, str],
    metric: str,
    min_folds: int = 1,
    samples: int = SAMPLES,
) -> list[Replayed]:
    """The paired rule replayed on finished trials (each a list of fold predictions, in fold order):
    in trial order, each is compared after every fold with the best trial finished before it, as the
    search would have done. Trials pruned by the rule still count as finished here (they were)."""
    result, best_number, best_value = [], None, None
    finished: dict[int, Sequence[pd.DataFrame]] = {}
    _, direction = OBJECTIVES[metric]
    for number in sorted(trials):
        folds = trials[number]
        stopped = None
        if best_number is not None:
            for done in range(min_folds, len(folds)):  # after the last fold the trial is finished anyway
                level = pruning_level(len(folds), min_folds)
                if _behind(folds[:done], finished[best_number], groups, metric, samples, level):
                    stopped = done
                    break
        full, _, _ = out_of_fold_scores(folds)
        value = objective_value(full, metric)
        ahead = best_value is not None and (value < best_value if direction == "minimize" else value > best_value)
        result.append(Replayed(number, stopped, bool(ahead)))
        finished[number] = folds
        if best_value is None or ahead:
            best_number, best_value = number, value
    return result


def _behind(
    trial_folds: Sequence[pd.DataFrame],
    best_folds: Sequence[pd.DataFrame],
    groups: Mapping[str, str],
    metric: str,
    samples: int,
    level: float,
) -> bool:
    trial, posters, _ = out_of_fold_scores(trial_folds)
    best, best_posters, _ = out_of_fold_scores(best_folds)
    best = restrict(best, best_posters, posters)
    groups_of = [groups.get(p, p) for p in posters]
    return paired_gap(trial, best, groups_of, metric, samples, level=level).clearly_behind
