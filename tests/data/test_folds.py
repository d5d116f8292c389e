"""Cross-validation folds: stratified, seeded, duplicate groups kept together, a fixed test part kept out
of every fold, and each fold run's splits derived from one fold assignment."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from genre_lightning.data.folds import CrossValidation, assign_folds, fold_splits
from genre_lightning.data.stratify import HOLDOUT, SplitItems
from genre_lightning.utils.errors import ConfigError
from tests.helpers.cli import run_cli
from tests.helpers.posters import copy_posters

GENRES = ["Action", "Comedy", "Horror", "Romance"]


def toy(n_per_genre: int = 25):
    """Labels and groups with pairs of copies, some of them filed under two genres."""
    labels = [g for g in GENRES for _ in range(n_per_genre)]
    groups = [f"u{i}" for i in range(len(labels))]
    for i in range(0, 20, 2):  # ten pairs of copies, half of them across two genres
        j = i + (n_per_genre if i % 4 == 0 else 1)
        groups[j] = groups[i]
    return labels, [[label] for label in labels], groups


def test_folds_are_stratified_grouped_seeded_and_keep_the_fixed_test_part_out():
    labels, sets, groups = toy()
    cv = CrossValidation(folds=4, test_fraction=0.2)
    items = SplitItems(labels, sets, groups)
    folds = assign_folds(items, cv, seed=3)
    assert folds == assign_folds(items, cv, seed=3)
    assert folds != assign_folds(items, cv, seed=4)
    frame = pd.DataFrame({"label": labels, "group": groups, "fold": folds})
    assert frame.groupby("group")["fold"].nunique().max() == 1  # a group never splits
    assert (frame["fold"] == HOLDOUT).sum() == pytest.approx(0.2 * len(labels), abs=4)
    inside = frame[frame["fold"] != HOLDOUT]
    counts = pd.crosstab(inside["fold"], inside["label"])
    assert sorted(counts.index) == ["0", "1", "2", "3"]
    assert (counts.max() - counts.min()).max() <= 2  # each genre spread evenly over the folds

    splits = fold_splits(folds, items, CrossValidation(4, fold=2, test_fraction=0.2), seed=3)
    frame["split"] = splits
    assert set(frame.loc[frame["fold"] == "2", "split"]) == {"test"}
    assert set(frame.loc[frame["fold"] == HOLDOUT, "split"]) == {HOLDOUT}
    rest = frame[~frame["fold"].isin(["2", HOLDOUT])]
    assert set(rest["split"]) == {"train", "val"}
    assert (rest["split"] == "val").mean() == pytest.approx(0.15, abs=0.05)
    assert frame.groupby("group")["split"].nunique().max() == 1
    refit = fold_splits(folds, items, CrossValidation(4, fold="all", test_fraction=0.2), seed=3)
    assert Counter(refit) == {"train": len(inside), "test": len(labels) - len(inside)}


def test_multilabel_folds_use_iterative_stratification_over_genre_sets():
    labels, _, groups = toy()
    sets = [[label, "Comedy"] if i % 7 == 0 and label != "Comedy" else [label] for i, label in enumerate(labels)]
    folds = assign_folds(SplitItems(labels, sets, groups, multilabel=True), CrossValidation(folds=3), seed=0)
    frame = pd.DataFrame({"group": groups, "fold": folds, "sets": ["|".join(s) for s in sets]})
    assert frame.groupby("group")["fold"].nunique().max() == 1
    comedy = frame[frame["sets"].str.contains("Comedy")]
    assert comedy["fold"].value_counts().max() - comedy["fold"].value_counts().min() <= 3


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"folds": 1},
            "data.folds=1 is not valid: expected null (one train/val/test split) or an integer of at least 2",
        ),
        ({"folds": 3, "fold": 3}, "data.fold=3 is not valid: expected an integer from 0 to 2, or all"),
        ({"folds": None, "fold": 1}, "data.fold=1 is not valid: expected null without data.folds"),
        ({"folds": 3, "test_fraction": 1.0}, "data.cv_test_fraction=1.0 is not valid: expected a fraction from 0"),
        ({"folds": 3, "val_fraction": 0}, "data.cv_val_fraction=0 is not valid: expected a fraction above 0"),
    ],
)
def test_bad_settings_are_one_line(settings: dict, message: str):
    with pytest.raises(ConfigError) as error:
        CrossValidation.from_config(**settings)
    assert str(error.value).startswith(message)


def test_more_folds_than_the_smallest_genre_has_groups_is_one_line():
    labels, sets, groups = toy(n_per_genre=6)
    items = SplitItems(labels, sets, groups)
    per_genre = pd.DataFrame({"label": labels, "group": groups}).groupby("label")["group"].nunique()
    most, genre = int(per_genre.min()), str(per_genre.idxmin())
    assert most < 6  # copies make the smallest genre's group count smaller than its poster count
    with pytest.raises(ConfigError) as error:
        assign_folds(items, CrossValidation(folds=most + 1), seed=0)
    assert str(error.value) == (
        f"data.folds={most + 1} is not valid: expected an integer from 2 to {most}: "
        f"the smallest genre's number of duplicate groups ({genre}: {most})"
    )
    assert set(assign_folds(items, CrossValidation(folds=most), seed=0)) == {str(k) for k in range(most)}


@pytest.mark.slow
def test_genre_data_writes_folds_that_keep_copies_together(poster_root: Path, tmp_path: Path):
    """As a user runs it: copies of posters (some filed under a second genre) land in one fold."""
    root = tmp_path / "posters"
    copy_posters(poster_root, root)
    for i in range(3):
        shutil.copy(root / "Action" / f"action_{i:04d}.jpg", root / "Comedy" / f"copy_of_action_{i}.jpg")
        shutil.copy(root / "Horror" / f"horror_{i:04d}.jpg", root / "Horror" / f"again_{i}.jpg")
    with open(tmp_path / "out.log", "w") as log:
        done = run_cli(
            "genre-data", f"data.root={root}", "data.folds=3", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, stdout=log
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Cross-validation, 3 folds" in (tmp_path / "out.log").read_text()
    frame = pd.read_csv(tmp_path / "run" / "annotations.csv", dtype=str, keep_default_na=False)
    copies = frame[frame["group"].duplicated(keep=False)]
    assert len(copies) == 12 and copies["label"].nunique() == 3  # Action/Comedy pairs and Horror pairs
    assert frame.groupby("group")["fold"].nunique().max() == 1
    assert sorted(frame["fold"].unique()) == ["0", "1", "2"] and set(frame["split"]) == {"train"}
