"""k-fold cross-validation: each poster's fold, and the train/val/test split of one fold's run.

``assign_folds`` puts every item into one of ``data.folds`` folds, stratified by genre with duplicate
groups never split across folds (scikit-learn's ``StratifiedGroupKFold``; multi-label data by
iterative stratification over the genre sets), seeded by ``data.split_seed``. An optional fixed test
part (``data.cv_test_fraction``) is set aside first, stratified and grouped too, and belongs to no
fold. ``annotations.csv`` keeps the result in its ``fold`` column (``0``..``K-1``, ``holdout``).

``fold_splits`` derives one run's splits from that column (``data.fold``):

* ``data.fold=i``: the held-out fold is the run's ``test`` split (so its ``test_predictions.csv``
  holds the out-of-fold predictions), an inner ``val`` split (``data.cv_val_fraction`` of the other
  folds, stratified and grouped, seeded by the split seed and the fold) chooses the best epoch, the
  probe's C and the temperature on posters the run does not report on, the rest is ``train``; the
  fixed test part is ``holdout`` (``genre-eval split=holdout`` evaluates it);
* ``data.fold=all`` (the refit, and a fold assignment alone): every fold poster is ``train``, the
  fixed test part is ``test``.

A sweep's jobs share one fold assignment (``launch/sweep.py``) and derive their own splits from it,
so ``-m data.fold=0,1,2,3,4 model.optimizer.lr=1e-3,3e-4`` compares both recipes on the same folds.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from genre_lightning.data.stratify import HOLDOUT, SplitItems, iterative_stratified_parts
from genre_lightning.utils.errors import ConfigError

ALL_FOLDS = "all"  # data.fold=all: the refit on every poster outside the fixed test part


@dataclass(frozen=True)
class CrossValidation:
    """The cross-validation settings of a run (``data.folds``, ``data.fold``, ``data.cv_*``).

    ``fold`` is 0..K-1, ``all`` (the refit), or None (the fold assignment alone: ``genre-data``,
    the launcher of a sweep over ``data.fold``)."""

    folds: int
    fold: int | str | None = None
    test_fraction: float = 0.0
    val_fraction: float = 0.15

    @property
    def refit(self) -> bool:
        """Every fold poster trains: ``data.fold=all`` (or no fold chosen)."""
        return self.fold is None or self.fold == ALL_FOLDS

    @classmethod
    def from_config(
        cls, folds: Any, fold: Any = None, test_fraction: Any = 0.0, val_fraction: Any = 0.15
    ) -> CrossValidation | None:
        """The settings, checked one key at a time (one line naming the key); None without ``data.folds``."""
        if folds is None:
            if fold is not None:
                raise ConfigError(
                    "data.fold", fold, "null without data.folds (data.folds=5 for 5-fold cross-validation)"
                )
            if test_fraction:
                raise ConfigError("data.cv_test_fraction", test_fraction, "0 without data.folds")
            return None
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ConfigError(
                "data.folds",
                folds,
                "null (one train/val/test split) or an integer of at least 2 (k-fold cross-validation)",
            )
        if fold is not None and fold != ALL_FOLDS and (isinstance(fold, bool) or fold not in range(folds)):
            raise ConfigError(
                "data.fold", fold, f"an integer from 0 to {folds - 1}, or all (the refit on every poster)"
            )
        for key, value, low_open in (
            ("data.cv_test_fraction", test_fraction, False),
            ("data.cv_val_fraction", val_fraction, True),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (0 < value < 1 or (value == 0 and not low_open))
            ):
                lowest = "above 0" if low_open else "from 0"
                raise ConfigError(key, value, f"a fraction {lowest} and below 1")
        return cls(folds, fold, float(test_fraction), float(val_fraction))


def assign_folds(items: SplitItems, cv: CrossValidation, seed: int) -> list[str]:
    """Each item's fold (``"0"``..``"K-1"``) or ``holdout`` (the fixed test part)."""
    folds = [HOLDOUT] * len(items)
    inside = list(range(len(items)))
    if cv.test_fraction > 0:
        fractions = {"train": 1 - cv.test_fraction, "val": 0.0, "test": cv.test_fraction}
        parts = items.split(fractions, seed)
        inside = [i for i, part in zip(inside, parts, strict=True) if part != "test"]
    fold_items = items.subset(inside)
    sets = fold_items.label_sets if items.multilabel else [[label] for label in fold_items.labels]
    check_fold_count(cv, sets, fold_items.groups)
    if items.multilabel:
        parts = iterative_stratified_parts(
            sets, fold_items.groups, {str(k): 1 / cv.folds for k in range(cv.folds)}, seed
        )
        for i, part in zip(inside, parts, strict=True):
            folds[i] = part
        return folds
    splitter = StratifiedGroupKFold(n_splits=cv.folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(inside)), fold_items.labels, fold_items.groups)):
        for j in held:
            folds[inside[j]] = str(k)
    return folds


def check_fold_count(cv: CrossValidation, label_sets: Sequence[Sequence[str]], groups: Sequence[str]) -> None:
    """At most as many folds as the smallest genre has duplicate groups: every fold must be able to
    hold each genre (a group never splits across folds)."""
    groups_of: dict[str, set[str]] = defaultdict(set)
    for labels, group in zip(label_sets, groups, strict=True):
        for label in labels:
            groups_of[label].add(group)
    genre, count = min(((g, len(s)) for g, s in groups_of.items()), key=lambda pair: (pair[1], pair[0]))
    if cv.folds > count:
        where = " outside the fixed test part" if cv.test_fraction else ""
        raise ConfigError(
            "data.folds",
            cv.folds,
            f"an integer from 2 to {count}: the smallest genre's number of duplicate groups{where} ({genre}: {count})",
        )


def fold_splits(folds: Sequence[str], items: SplitItems, cv: CrossValidation, seed: int) -> list[str]:
    """The split of each item in the run of fold ``cv.fold`` (see the module docstring)."""
    if cv.refit:
        return ["test" if f == HOLDOUT else "train" for f in folds]
    held = str(cv.fold)
    splits = [HOLDOUT if f == HOLDOUT else "test" if f == held else "train" for f in folds]
    rest = [i for i, split in enumerate(splits) if split == "train"]
    fractions = {"train": 1 - cv.val_fraction, "val": cv.val_fraction, "test": 0.0}
    carved = items.subset(rest).split(fractions, fold_seed(seed, int(cv.fold)))
    for i, split in zip(rest, carved, strict=True):
        splits[i] = split
    return splits


def fold_seed(seed: int, fold: int) -> int:
    """The seed of fold ``fold``'s inner validation split: another draw for every fold and split seed."""
    return int(np.random.SeedSequence([abs(int(seed)), fold]).generate_state(1)[0])


def check_fold_column(folds: Sequence[str], cv: CrossValidation, source: str) -> None:
    """A reused ``annotations.csv`` (a sweep's, or ``data.split_file``) must hold ``cv.folds`` folds."""
    found = sorted({f for f in folds if f != HOLDOUT})
    if found != [str(k) for k in range(cv.folds)]:
        what = f"folds {found}" if any(found) else "no fold column"
        raise ConfigError(
            "data.split_file",
            source,
            f"an annotations.csv with the {cv.folds} folds of data.folds={cv.folds} (it has {what})",
        )


def fold_counts(folds: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """Items per fold and genre (``labels``: one genre per row, exploded for multi-label data)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for fold, label in zip(folds, labels, strict=True):
        counts[fold][label] += 1
    order = sorted(counts, key=lambda f: (f == HOLDOUT, int(f) if f.isdigit() else 0))
    return {f: dict(counts[f]) for f in order}
