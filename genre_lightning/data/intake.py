"""The data intake: scan, verify, group duplicates, split, and write the run's ``annotations.csv``
(format: ``data/annotations.py``), ``data_report.json`` and ``verified.csv``.

``prepare_annotations`` makes or reuses the split that ``split_choice.choose_split`` picks
(training, evaluation and ``genre-data`` all go through it, so they agree on "the split");
``make_annotations`` is the sequence that makes a new one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from genre_lightning.data.annotations import COLUMNS, REPORT_FILE, genre_rows, read_split_file, split_digest
from genre_lightning.data.duplicates import (
    apply_policy,
    check_duplicate_options,
    duplicate_summary,
    group_duplicates,
)
from genre_lightning.data.folds import CrossValidation, assign_folds, check_fold_column, fold_counts, fold_splits
from genre_lightning.data.scan import Candidate, ScanResult, Skipped, scan, verify_all
from genre_lightning.data.split_choice import ANNOTATIONS_FILE, choose_split
from genre_lightning.data.stratify import (
    SPLIT_NAMES,
    SPLITS,
    iterative_stratified_split,
    stratified_group_split,
)
from genre_lightning.data.verified import RECORDS_FILE, VerificationRecords, cache_file
from genre_lightning.utils.csvio import TEXT, write_csv
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)


def with_fold_splits(frame: pd.DataFrame, cv: CrossValidation, seed: int, task: str, source: str) -> pd.DataFrame:
    """``frame`` (a reused annotations.csv with a fold column) with the splits of fold ``cv.fold``."""
    check_fold_column(list(frame["fold"]), cv, source)
    frame = frame.copy()
    frame["split"] = fold_splits(
        list(frame["fold"]),
        list(frame["label"]),
        _label_sets(frame),
        list(frame["group"]),
        cv,
        seed,
        task == "multilabel",
    )
    return frame


def _label_sets(frame: pd.DataFrame) -> list[list[str]]:
    return [s.split("|") for s in frame["labels"]]


def make_annotations(
    classes: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
    root: str | Path | None = None,
    annotations: str | Path | None = None,
    verify_workers: int | None = None,
    min_image_side: int = 1,
    duplicates: Mapping[str, Any] | None = None,
    task: str = "single",
    cv: CrossValidation | None = None,
    records: VerificationRecords | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Scan, verify, group duplicates, apply the duplicate policy and split.

    ``task=multilabel`` merges each duplicate group into one item with all its genres and splits
    by iterative stratification over the genre sets; ``single`` stratifies by the one label.
    With ``cv`` the items are assigned to folds first and the split is that of ``cv.fold``.
    Files unchanged since their record in ``records`` are not decoded again; ``records`` receives
    the outcome of every file decoded now. Returns the annotations table and the data report.
    """
    options = check_duplicate_options(duplicates, task)  # before the scan: a typo must not cost a full scan
    result = scan(classes, root, annotations, verify_workers, min_image_side, records)
    records = sorted(result.records, key=lambda r: r.path)
    paths, labels = [r.path for r in records], [r.label for r in records]
    sha256 = [r.sha256 for r in records]
    groups = group_duplicates(sha256, [r.phash for r in records], int(options["near_threshold"]))
    summary = duplicate_summary(paths, labels, sha256, groups, classes)
    own_label_sets = [r.labels or r.label for r in records]
    outcome = apply_policy(paths, labels, groups, options["policy"], classes, own_label_sets)
    result.skipped.extend(Skipped(paths[i], labels[i], reason) for i, reason in outcome.dropped)
    result.merged = [Skipped(paths[i], labels[i], f"merged into {paths[j]}") for i, j in outcome.merged]
    result.records = [records[i] for i in outcome.keep]
    report = result.report(classes)
    if not result.records:
        if annotations:
            raise ConfigError("data.annotations", str(annotations), "a CSV that lists at least one readable image")
        raise ConfigError("data.root", str(root), "a folder with readable images in its genre folders")
    frame = pd.DataFrame(
        {
            "file_path": pd.Series([paths[i] for i in outcome.keep], dtype=TEXT),
            "label": [labels[i] for i in outcome.keep],
            "sha256": [sha256[i] for i in outcome.keep],
            "group": [str(groups[i]) for i in outcome.keep],
            "labels": [outcome.labels.get(i, own_label_sets[i]) for i in outcome.keep],
        }
    )
    # Every genre needs an image: under multilabel any genre of a poster counts (a genre that only
    # appears beside another one is still learnt), otherwise its one label.
    covered = genre_rows(frame, task)["label"].value_counts()
    for genre in classes:
        report["per_class"][genre]["with_genre"] = int(covered.get(genre, 0))
    empty = [c for c in classes if covered.get(c, 0) == 0]
    if empty:
        raise ConfigError("data.classes", list(classes), f"genres with at least one usable image (none for {empty})")
    multilabel = task == "multilabel"
    labels, label_sets, groups = list(frame["label"]), _label_sets(frame), list(frame["group"])
    frame["fold"] = assign_folds(labels, label_sets, groups, cv, seed, multilabel) if cv else ""
    if cv:
        frame["split"] = fold_splits(list(frame["fold"]), labels, label_sets, groups, cv, seed, multilabel)
    elif multilabel:
        frame["split"] = iterative_stratified_split(label_sets, groups, fractions, seed)
    else:
        frame["split"] = stratified_group_split(labels, groups, fractions, seed)
    report["split"] = {
        "seed": seed,
        "fractions": dict(fractions),
        "task": task,
        **_split_summary(frame, classes, task, cv),
    }
    report["duplicates"] = {
        **summary,
        **options,
        **_affected_test_items(frame, summary),
        "merged": [{"path": paths[i], "into": paths[j]} for i, j in outcome.merged],
    }
    return frame[COLUMNS], report


def _affected_test_items(frame: pd.DataFrame, summary: dict) -> dict:
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


def _split_summary(frame: pd.DataFrame, classes: Sequence[str], task: str, cv: CrossValidation | None) -> dict:
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


def prepare_annotations(
    output_dir: str | Path,
    classes: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
    root: str | Path | None = None,
    annotations: str | Path | None = None,
    split_file: str | Path | None = None,
    verify_workers: int | None = None,
    min_image_side: int = 1,
    duplicates: Mapping[str, Any] | None = None,
    task: str = "single",
    cv: CrossValidation | None = None,
    verify_cache: str | Path | None = None,
) -> Path:
    """Write ``annotations.csv``, ``data_report.json`` and ``verified.csv`` into ``output_dir`` and
    return the CSV path.

    An existing ``annotations.csv`` in ``output_dir`` is kept (a resumed or requeued run
    must see the split it started with). ``split_file`` reuses another run's split exactly; with
    ``cv``, its fold assignment, and the run's splits are those of ``cv.fold`` (``data/folds.py``). Its
    files are checked against the ``verified.csv`` beside it and decoded only where they changed.
    ``verify_cache`` (a folder) keeps the records of every file of a data source for later new splits.
    """
    output_dir = Path(output_dir)
    target = output_dir / ANNOTATIONS_FILE
    choice = choose_split(split_file, run_folder=output_dir)
    if choice.source == "run_folder":
        log.info("Reusing the split already in this run folder: %s", target)
        return target
    output_dir.mkdir(parents=True, exist_ok=True)
    records = VerificationRecords.read(output_dir / RECORDS_FILE)  # this folder's own, if any
    if choice.source == "split_file":
        frame = read_split_file(split_file, classes)
        if cv is not None:
            frame = with_fold_splits(frame, cv, seed, task, str(split_file))
        records.update(VerificationRecords.read(Path(split_file).parent / RECORDS_FILE))
        report = split_file_report(frame, classes, split_file, verify_workers, min_image_side, task, cv, records)
        listed = list(frame["file_path"])
    else:
        cached = cache_file(verify_cache, annotations or root)
        records.update(VerificationRecords.read(cached))
        frame, report = make_annotations(
            classes, fractions, seed, root, annotations, verify_workers, min_image_side, duplicates, task, cv, records
        )
        listed = _scanned_paths(report, frame, records)
        _merge_into_cache(cached, records.subset(listed))
    if target.is_file() and split_digest(read_split_file(target, classes)) != split_digest(frame):
        raise ConfigError("data.split_file", str(split_file), f"the same split as the one already in {target}")
    records.subset(listed).write(output_dir / RECORDS_FILE)
    write_csv(frame, target)
    report_path = output_dir / REPORT_FILE
    report_path.with_name(REPORT_FILE + ".tmp").write_text(json.dumps(report, indent=2))
    report_path.with_name(REPORT_FILE + ".tmp").replace(report_path)
    _log_summary(report, classes)
    return target


def _scanned_paths(report: dict, frame: pd.DataFrame, records: VerificationRecords) -> list[str]:
    """Every file the scan verified: kept, skipped (with a record) and merged or dropped copies."""
    paths = set(frame["file_path"]) | {s["path"] for s in report["skipped"]}
    paths |= {p for g in report.get("duplicates", {}).get("groups", []) for p in g["paths"]}
    return [p for p in paths if p in records.by_path]


def _merge_into_cache(path: Path | None, records: VerificationRecords) -> None:
    """Add ``records`` to the cache file ``path`` (re-read first: another run may have added to it)."""
    if path is None:
        return
    merged = VerificationRecords.read(path)
    if all(merged.by_path.get(p) == record for p, record in records.by_path.items()):
        return  # nothing new: a second scan of the same folder does not rewrite the cache
    merged.update(records)
    try:
        merged.write(path)
    except OSError as err:  # a full or read-only cache folder costs a later decode, never the run
        log.warning("Could not write verification records to %s (%s)", path, err)


def split_file_report(
    frame: pd.DataFrame,
    classes: Sequence[str],
    split_file: str | Path,
    verify_workers: int | None = None,
    min_side: int = 1,
    task: str = "single",
    cv: CrossValidation | None = None,
    records: VerificationRecords | None = None,
) -> dict:
    """The data report of a reused split: every listed file checked again, counted per genre.

    A file unchanged since its record in ``records`` keeps its outcome; any other is decoded again.
    The split itself is reused exactly (its rows are not changed); a file that no longer
    verifies is reported here and skipped, with its reason, when training reads it."""
    candidates = [Candidate(p, label) for p, label in zip(frame["file_path"], frame["label"], strict=True)]
    kept, skipped = verify_all(candidates, verify_workers, min_side, records)
    report = ScanResult(records=kept, skipped=skipped).report(classes)
    report["split_file"] = str(Path(split_file).resolve())
    report["split"] = {"task": task, **_split_summary(frame, classes, task, cv)}
    if skipped:
        log.warning("%d file(s) listed in %s no longer verify; the split is reused as it is", len(skipped), split_file)
    return report


def _log_summary(report: dict, classes: Sequence[str]) -> None:
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
