"""The run's ``data_report.json``: what the intake found, kept, left out and how it split, and the
log lines that summarise it (``data/intake.py`` fills it; ``genre-data`` prints it as tables)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from genre_lightning.data.annotations import REPORT_FILE, genre_rows
from genre_lightning.data.folds import CrossValidation, fold_counts
from genre_lightning.data.stratify import SPLIT_NAMES, SPLITS

log = logging.getLogger(__name__)


def affected_test_items(frame: pd.DataFrame, summary: dict) -> dict:
    """How many test items belong to a duplicate group (and to one with conflicting labels)."""
    in_group = {p for g in summary["groups"] for p in g["paths"]}
    conflicting = {p for g in summary["groups"] if g["conflicting"] for p in g["paths"]}
    test = frame.loc[frame["split"] == "test", "file_path"]
    return {
        "test_items_in_duplicate_groups": int(test.isin(in_group).sum()),
        "test_items_with_conflicting_labels": int(test.isin(conflicting).sum()),
    }


def _split_counts(frame: pd.DataFrame, classes: Sequence[str], task: str = "single") -> dict:
    """Items per split and genre (see ``genre_rows``); the holdout split only where there is one."""
    table = genre_rows(frame, task).groupby(["split", "label"]).size()
    names = [s for s in SPLIT_NAMES if s in SPLITS or (frame["split"] == s).any()]
    return {s: {c: int(table.get((s, c), 0)) for c in classes} for s in names}


def split_summary(frame: pd.DataFrame, classes: Sequence[str], task: str, cv: CrossValidation | None) -> dict:
    """The report's split counts, and with cross-validation the settings and the items per fold."""
    summary: dict[str, Any] = {"counts": _split_counts(frame, classes, task)}
    if cv is not None:
        rows = genre_rows(frame, task)
        summary["cross_validation"] = {
            "folds": cv.folds,
            "fold": cv.fold,
            "cv_test_fraction": cv.test_fraction,
            "cv_val_fraction": cv.val_fraction,
            "fold_counts": fold_counts(list(rows["fold"]), list(rows["label"])),
        }
    return summary


def write_report(report: dict, output_dir: Path) -> None:
    """``data_report.json`` in ``output_dir``, replaced whole (a reader never sees half of it)."""
    path = output_dir / REPORT_FILE
    path.with_name(REPORT_FILE + ".tmp").write_text(json.dumps(report, indent=2))
    path.with_name(REPORT_FILE + ".tmp").replace(path)


def log_summary(report: dict, classes: Sequence[str]) -> None:
    """The report in a few log lines: the split, the folds, and what was left out and why."""
    counts = report["split"]["counts"]
    log.info(
        "Split (%s): %s",
        "/".join(counts),
        ", ".join(f"{c} {'/'.join(str(counts[s][c]) for s in counts)}" for c in classes),
    )
    cv = report["split"].get("cross_validation")
    if cv:
        log.info(
            "Cross-validation: %d folds, this run's fold: %s; posters per fold: %s",
            cv["folds"],
            cv["fold"],
            ", ".join(f"{fold} {sum(n.values())}" for fold, n in cv["fold_counts"].items()),
        )
    if report.get("n_skipped"):
        log.warning(
            "Skipped %d file(s); reasons in %s: %s", report["n_skipped"], REPORT_FILE, report["skipped_by_reason"]
        )
    # genre-train prints no table: these lines are its only sign that files were left out.
    if report.get("unknown_folders"):
        log.warning("Folders that are not a configured genre (not used): %s", ", ".join(report["unknown_folders"]))
    if report.get("n_ignored"):
        log.warning(
            "Ignored %d file(s) (%d not inside a genre folder, the rest not images or directory links); listed in %s",
            report["n_ignored"],
            report.get("n_outside_genre_folders", 0),
            REPORT_FILE,
        )
    duplicates = report.get("duplicates")
    if duplicates and duplicates["n_groups"]:
        log.info(
            "Duplicates (policy %s): %d groups (%d exact, %d near), %d with conflicting labels; "
            "%d test items in a group, %d with conflicting labels",
            duplicates["policy"],
            duplicates["n_groups"],
            duplicates["n_exact_groups"],
            duplicates["n_near_groups"],
            duplicates["n_conflicting_groups"],
            duplicates["test_items_in_duplicate_groups"],
            duplicates["test_items_with_conflicting_labels"],
        )
