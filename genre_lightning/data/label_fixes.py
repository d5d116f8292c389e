"""``data.label_fixes=<csv>``: act on doubted labels without touching the user's files.

The CSV has one row per poster to fix: ``file_path`` (absolute, or relative to the CSV's folder),
``action`` (``exclude`` or ``relabel``) and ``genre`` (the new genre of a relabel, ``A|B`` for several
under ``data.task=multilabel``; ignored for an exclusion). Other columns are ignored, so
``label_issues.csv`` (``genre-report`` on a cross-validation: ``results/label_issues.py``) is a fixes
file as it is (every suspect excluded) or after its ``action`` column is edited.

The fixes are applied to the split after it is made (``apply_label_fixes``, called from
``prepare_annotations``), never to the files: the run's ``annotations.csv`` holds the fixed rows and
``label_fixes.csv`` beside it what was changed. ``data.label_fixes_scope``:

* ``train`` (default): only the rows the run learns from and chooses with (``train`` and ``val``)
  change; the ``test`` (a fold's held-out posters) and ``holdout`` rows stay as filed, so a
  cross-validation with fixes is scored out of fold on every poster as filed, paired with one
  without them;
* ``all``: every split, the test split included (the fixed labels are taken as the truth).

The split and fold assignment are those of the data as filed (the same folds with or without fixes);
the fixes' digest joins the fold assignment's (``fold_digest_with_fixes``), so ``genre-ensemble``
never combines fold models trained with and without them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from genre_lightning.utils.csvio import read_csv, write_csv
from genre_lightning.utils.errors import ConfigError

KEY = "data.label_fixes"
SCOPE_KEY = "data.label_fixes_scope"
ACTIONS = ("exclude", "relabel")
SCOPES = {"train": ("train", "val"), "all": None}  # the splits a fix changes (None: every split)
RECORD_FILE = "label_fixes.csv"


@dataclass(frozen=True)
class LabelFixes:
    """The checked fixes: ``table`` (``file_path`` made absolute, ``action``, ``genre``) and their scope."""

    table: pd.DataFrame
    scope: str
    source: str

    @property
    def paths(self) -> set[str]:
        return set(self.table["file_path"])

    @property
    def digest(self) -> str:
        rows = self.table.sort_values("file_path")[["file_path", "action", "genre"]].to_csv(index=False)
        text = f"scope={self.scope}\n{rows}"
        return hashlib.sha256(text.encode(errors="surrogateescape")).hexdigest()[:16]


def read_label_fixes(
    path: str | Path | None, classes: Sequence[str], scope: str = "train", multilabel: bool = False
) -> LabelFixes | None:
    """The fixes in ``path`` checked row by row (None without a path); a bad row is a one-line error."""
    if scope not in SCOPES:
        raise ConfigError(SCOPE_KEY, scope, "train (fixes change training and validation only) or all")
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise ConfigError(KEY, str(path), "an existing CSV with file_path,action,genre columns")
    table = read_csv(path)
    missing = {"file_path", "action"} - set(table.columns)
    if missing:
        raise ConfigError(KEY, str(path), f"a CSV with file_path,action,genre columns (missing {sorted(missing)})")
    if "genre" not in table.columns:
        table["genre"] = ""
    table["action"] = table["action"].str.strip().str.lower()
    table["genre"] = [_checked_genre(row, path, classes, multilabel) for row in table.itertuples()]
    table["file_path"] = [p if os.path.isabs(p) else os.path.abspath(path.parent / p) for p in table["file_path"]]
    twice = table["file_path"][table["file_path"].duplicated()]
    if len(twice):
        raise ConfigError(KEY, str(path), f"one row per poster ({twice.iloc[0]!r} has several)")
    return LabelFixes(table[["file_path", "action", "genre"]].reset_index(drop=True), scope, str(path))


def _checked_genre(row, path: Path, classes: Sequence[str], multilabel: bool) -> str:
    where = f"row {row.Index + 2}"
    if row.action not in ACTIONS:
        raise ConfigError(KEY, str(path), f"action values among {list(ACTIONS)} ({where}: {row.action!r})")
    if row.action == "exclude":
        return ""
    genres = [g.strip() for g in str(row.genre).split("|") if g.strip()]
    if not genres or any(g not in classes for g in genres) or (len(genres) > 1 and not multilabel):
        valid = "genres joined by '|'" if multilabel else "one genre"
        expected = f"relabel rows whose genre is {valid} of {list(classes)} ({where}: {row.genre!r})"
        raise ConfigError(KEY, str(path), expected)
    return "|".join(genres)


def apply_label_fixes(frame: pd.DataFrame, fixes: LabelFixes | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``frame`` (a split, as filed) with the fixes applied to the rows of their scope, and the record
    of what changed (``file_path, action, filed, genre, split``). A fix naming a poster that is not in
    ``frame`` is a one-line error."""
    if fixes is None:
        return frame, pd.DataFrame(columns=["file_path", "action", "filed", "genre", "split"])
    absolute = frame["file_path"].map(os.path.abspath)
    unknown = sorted(fixes.paths - set(absolute))
    if unknown:
        raise ConfigError(
            KEY,
            fixes.source,
            f"fixes of posters in the data ({len(unknown)} are not among its {len(frame)}, e.g. {unknown[0]!r}; "
            "data.split_file must be a split as filed, not a fixed run's annotations.csv)",
        )
    fix_of = fixes.table.set_index("file_path")
    splits = SCOPES[fixes.scope]
    in_scope = absolute.isin(fixes.paths) & (frame["split"].isin(splits) if splits else True)
    actions = absolute[in_scope].map(fix_of["action"])
    record = frame.loc[in_scope, ["file_path", "label", "split"]].rename(columns={"label": "filed"})
    record.insert(1, "action", actions)
    record.insert(3, "genre", absolute[in_scope].map(fix_of["genre"]))
    fixed = frame.copy()
    relabel = actions.index[actions == "relabel"]
    new = absolute[relabel].map(fix_of["genre"])
    fixed.loc[relabel, "labels"] = new
    fixed.loc[relabel, "label"] = new.str.split("|").str[0]
    fixed = fixed.drop(index=actions.index[actions == "exclude"]).reset_index(drop=True)
    return fixed, record.reset_index(drop=True)


def fold_digest_with_fixes(digest: str | None, fixes: LabelFixes | None) -> str | None:
    """A fold assignment's digest (of the rows no fix names) joined with the fixes' digest."""
    if digest is None or fixes is None:
        return digest
    return hashlib.sha256(f"{digest}:{fixes.digest}".encode()).hexdigest()[:16]


def unfixed_rows(frame: pd.DataFrame, fixes: LabelFixes | None) -> pd.DataFrame:
    """The rows of ``frame`` that no fix names: the same in every fold run of one cross-validation."""
    if fixes is None:
        return frame
    return frame[~frame["file_path"].map(os.path.abspath).isin(fixes.paths)]


def fix_split(frame: pd.DataFrame, report: dict, fixes: LabelFixes | None, output_dir: Path) -> pd.DataFrame:
    """The intake's step: ``frame`` with the fixes applied; their summary goes into ``report`` and the
    record of every changed row into ``output_dir/label_fixes.csv``."""
    if fixes is None:
        return frame
    fixed, record = apply_label_fixes(frame, fixes)
    report["label_fixes"] = fixes_summary(fixes, record)
    write_csv(record, output_dir / RECORD_FILE)
    return fixed


def fixes_summary(fixes: LabelFixes | None, record: pd.DataFrame) -> dict | None:
    """``data_report.json``'s entry: where the fixes came from, their scope and digest, what changed."""
    if fixes is None:
        return None
    counts = record.groupby(["split", "action"]).size()
    return {
        "source": fixes.source,
        "scope": fixes.scope,
        "digest": fixes.digest,
        "fixes": len(fixes.table),
        "applied": {f"{split}/{action}": int(n) for (split, action), n in counts.items()},
    }
