"""data.label_fixes on a split: which rows change in each scope, and what the split's identity becomes.
(The end-to-end runs, through genre-train and genre-report: tests/results/test_label_issues.py.)"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from genre_lightning.data.annotations import fold_digest
from genre_lightning.data.folds import CrossValidation, fold_splits
from genre_lightning.data.label_fixes import (
    apply_label_fixes,
    fold_digest_with_fixes,
    read_label_fixes,
    unfixed_rows,
)
from genre_lightning.data.stratify import SplitItems
from genre_lightning.launch.sweep import split_settings
from tests.helpers.configs import compose_config

CLASSES = ["Action", "Comedy", "Horror", "Romance"]


def assignment(count: int = 24) -> pd.DataFrame:
    """A fold assignment of ``count`` posters (3 folds), as annotations.csv holds it."""
    labels = [CLASSES[i % 4] for i in range(count)]
    return pd.DataFrame(
        {
            "file_path": [f"/posters/{labels[i]}/{i:02d}.jpg" for i in range(count)],
            "label": labels,
            "split": "train",
            "sha256": "",
            "group": [str(i) for i in range(count)],
            "labels": labels,
            "fold": [str(i % 3) for i in range(count)],
        }
    )


def fold_run(frame: pd.DataFrame, fold: int) -> pd.DataFrame:
    cv = CrossValidation(3, fold, 0.0, 0.25)
    labels = list(frame["label"])
    items = SplitItems(labels, [[x] for x in labels], list(frame["group"]))
    splits = fold_splits(list(frame["fold"]), items, cv, 0)
    return frame.assign(split=splits)


def fixes_file(tmp_path: Path, rows: str, name: str = "fixes.csv") -> Path:
    path = tmp_path / name
    path.write_text("file_path,action,genre\n" + rows)
    return path


@pytest.mark.parametrize("scope", ["train", "all"])
def test_a_fix_changes_the_rows_of_its_scope_only(tmp_path: Path, scope: str):
    frame = fold_run(assignment(), 0)
    test = frame.index[frame["split"] == "test"]
    trained = frame.index[frame["split"] == "train"]
    named = [frame.loc[test[0], "file_path"], frame.loc[trained[0], "file_path"]]
    relabelled = frame.loc[trained[1], "file_path"]
    path = fixes_file(tmp_path, f"{named[0]},exclude,\n{named[1]},exclude,\n{relabelled},relabel,Horror\n")
    fixed, record = apply_label_fixes(frame, read_label_fixes(path, CLASSES, scope))

    gone = set(frame["file_path"]) - set(fixed["file_path"])
    assert gone == ({named[1]} if scope == "train" else set(named))
    row = fixed.set_index("file_path").loc[relabelled]
    assert (row["label"], row["labels"]) == ("Horror", "Horror")
    if scope == "train":  # the test rows are the same rows, as filed
        assert fixed[fixed["split"] == "test"].reset_index(drop=True).equals(frame.loc[test].reset_index(drop=True))
    assert set(record["file_path"]) == gone | {relabelled}
    assert record.set_index("file_path").loc[relabelled, "filed"] == frame.loc[trained[1], "label"]


def test_the_folds_of_one_cross_validation_with_fixes_share_one_fold_digest(tmp_path: Path):
    frame = assignment()
    named = frame.loc[[0, 1], "file_path"]
    fixes = read_label_fixes(fixes_file(tmp_path, f"{named[0]},exclude,\n{named[1]},relabel,Romance\n"), CLASSES)
    digests = set()
    for fold in range(3):
        fixed, _ = apply_label_fixes(fold_run(frame, fold), fixes)
        digests.add(fold_digest_with_fixes(fold_digest(unfixed_rows(fixed, fixes)), fixes))
    assert len(digests) == 1
    assert digests != {fold_digest(frame)}
    other = read_label_fixes(fixes_file(tmp_path, f"{named[0]},exclude,\n", "other.csv"), CLASSES)
    fixed, _ = apply_label_fixes(fold_run(frame, 0), other)
    assert fold_digest_with_fixes(fold_digest(unfixed_rows(fixed, other)), other) not in digests
    broader = read_label_fixes(fixes.source, CLASSES, "all")
    assert broader.digest != fixes.digest  # the scope is part of the fixes' identity


def test_label_fixes_are_split_settings_compared_by_content(tmp_path: Path):
    path = fixes_file(tmp_path, "/posters/a.jpg,exclude,\n")
    base = compose_config("train", ["data.root=/posters"], tmp_path).data
    fixed = compose_config("train", ["data.root=/posters", f"data.label_fixes={path}"], tmp_path).data
    before = split_settings(fixed)
    assert split_settings(base) != before
    path.write_text("file_path,action,genre\n/posters/b.jpg,exclude,\n")
    assert split_settings(fixed) != before  # an edit between the launcher and a job shows
    everywhere = compose_config(
        "train", ["data.root=/posters", f"data.label_fixes={path}", "data.label_fixes_scope=all"], tmp_path
    ).data
    assert split_settings(everywhere) != split_settings(fixed)
