"""The format of a run's ``annotations.csv``: its columns, reading and checking one, its fingerprints.

``annotations.csv`` columns: ``file_path, label, split, sha256, group, labels, fold``. ``group`` is
the duplicate group (identical or near-identical images share one, and one split);
``labels`` is every genre of the item, joined by ``|`` (``A|B`` for a merged duplicate group or a
multi-label CSV row, else just ``label``): the targets of ``data.task=multilabel``, and the genres
a single-label prediction counts as correct for in ``acc_multi_genre``. ``fold`` is the item's
cross-validation fold (``0``..``K-1`` or ``holdout``, ``data.folds``; ``data/folds.py``), empty without.

``data/intake.py`` writes it (with ``data_report.json``, ``REPORT_FILE``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from genre_lightning.data.scan import split_labels
from genre_lightning.data.split_choice import ANNOTATIONS_FILE
from genre_lightning.data.stratify import HOLDOUT, SPLIT_NAMES
from genre_lightning.utils.csvio import TEXT, read_csv
from genre_lightning.utils.errors import ConfigError

__all__ = ["ANNOTATIONS_FILE", "COLUMNS", "REPORT_FILE", "fold_digest", "genre_rows", "read_split_file", "split_digest"]

REPORT_FILE = "data_report.json"
COLUMNS = ["file_path", "label", "split", "sha256", "group", "labels", "fold"]


def read_split_file(
    path: str | Path, classes: Sequence[str], key: str = "data.split_file", check_files: bool = True
) -> pd.DataFrame:
    """Read an ``annotations.csv`` and check it can be used as-is: columns, labels, splits, and (unless
    ``check_files`` is off: a split read from shards) that its files exist."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), "an existing annotations.csv with file_path,label,split columns")
    frame = read_csv(path)
    missing = {"file_path", "label", "split"} - set(frame.columns)
    if missing:
        raise ConfigError(key, str(path), f"a CSV with file_path,label,split columns (missing {sorted(missing)})")
    unknown_labels = sorted(set(frame["label"]) - set(classes))
    if unknown_labels:
        raise ConfigError(
            "data.classes", list(classes), f"a list that includes every label in {path} (also found {unknown_labels})"
        )
    unknown_splits = sorted(set(frame["split"]) - set(SPLIT_NAMES))
    if unknown_splits:
        raise ConfigError(key, str(path), f"split values among {list(SPLIT_NAMES)} (found {unknown_splits})")
    # A relative path is relative to the CSV's own folder (as for data.annotations), never to
    # the working directory, so the same file is found from anywhere; absolute paths stay as they are.
    absolute = [p if os.path.isabs(p) else os.path.abspath(path.parent / p) for p in frame["file_path"]]
    frame["file_path"] = pd.Series(absolute, index=frame.index, dtype=TEXT)
    gone = [p for p in frame["file_path"] if not Path(p).is_file()] if check_files else []
    if gone:
        raise ConfigError(key, str(path), f"a split whose files exist ({len(gone)} missing, e.g. {gone[0]!r})")
    # Split files written by other tools may only have the three required columns.
    defaults = {"sha256": "", "group": frame.index.astype(str), "labels": frame["label"], "fold": ""}
    for column, default in defaults.items():
        if column not in frame.columns:
            frame[column] = default
    frame["labels"] = [
        "|".join(split_labels(v, classes, f"{path.name} row {i + 2}")) for i, v in enumerate(frame["labels"])
    ]
    bad_folds = sorted({f for f in frame["fold"] if f and f != HOLDOUT and not f.isdigit()})
    if bad_folds:
        raise ConfigError(key, str(path), f"fold values that are fold numbers or {HOLDOUT!r} (found {bad_folds})")
    return frame[COLUMNS]


def split_digest(frame: pd.DataFrame) -> str:
    """A short fingerprint of a split, stored in checkpoints to catch a resume on another split."""
    return _digest(frame, "split")


def fold_digest(frame: pd.DataFrame) -> str | None:
    """A short fingerprint of a fold assignment (None without folds): the folds of one assignment
    differ in their splits but share this, which is what lets ``genre-ensemble`` combine them."""
    if not frame["fold"].astype(bool).any():
        return None
    return _digest(frame, "fold")


def _digest(frame: pd.DataFrame, column: str) -> str:
    rows = frame.sort_values("file_path")[["file_path", "label", column]].to_csv(index=False)
    return hashlib.sha256(rows.encode(errors="surrogateescape")).hexdigest()[:16]


def genre_rows(frame: pd.DataFrame, task: str = "single") -> pd.DataFrame:
    """The rows a genre count counts: ``frame`` itself (one genre per item, its ``label``), or for
    multi-label data one row per genre in ``labels``, in ``label`` (Action|Comedy counts for both)."""
    if task != "multilabel":
        return frame
    return frame.assign(label=frame["labels"].str.split("|")).explode("label")
