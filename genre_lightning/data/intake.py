"""The data intake: scan, verify, group duplicates, split, and write the run's ``annotations.csv``
(format: ``data/annotations.py``), ``data_report.json`` (``data/data_report.py``) and ``verified.csv``.

``prepare_annotations`` makes or reuses the split that ``split_choice.choose_split`` picks
(training, evaluation and ``genre-data`` all go through it, so they agree on "the split");
``make_annotations`` is the sequence that makes a new one. ``IntakeSettings`` (``data/settings.py``)
holds every setting they read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from genre_lightning.data.annotations import COLUMNS, genre_rows, read_split_file, split_digest
from genre_lightning.data.data_report import affected_test_items, log_summary, split_summary, write_report
from genre_lightning.data.duplicates import (
    apply_policy,
    check_duplicate_options,
    duplicate_summary,
    group_duplicates,
)
from genre_lightning.data.folds import assign_folds, check_fold_column, fold_splits
from genre_lightning.data.scan import Candidate, ScanResult, Skipped, scan, verify_all
from genre_lightning.data.settings import IntakeSettings
from genre_lightning.data.split_choice import ANNOTATIONS_FILE, choose_split
from genre_lightning.data.stratify import SplitItems
from genre_lightning.data.verified import RECORDS_FILE, VerificationRecords, cache_file
from genre_lightning.utils.csvio import TEXT, write_csv
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)


def prepare_annotations(output_dir: str | Path, settings: IntakeSettings) -> Path:
    """Write ``annotations.csv``, ``data_report.json`` and ``verified.csv`` into ``output_dir`` and
    return the CSV path.

    An existing ``annotations.csv`` in ``output_dir`` is kept (a resumed or requeued run
    must see the split it started with). ``settings.split_file`` reuses another run's split exactly;
    with ``settings.cv``, its fold assignment, and the run's splits are those of ``cv.fold``
    (``data/folds.py``). Its files are checked against the ``verified.csv`` beside it and decoded only
    where they changed. ``settings.verify_cache`` (a folder) keeps the records of every file of a data
    source for later new splits.
    """
    output_dir = Path(output_dir)
    target = output_dir / ANNOTATIONS_FILE
    choice = choose_split(settings.split_file, run_folder=output_dir)
    if choice.source == "run_folder":
        log.info("Reusing the split already in this run folder: %s", target)
        return target
    output_dir.mkdir(parents=True, exist_ok=True)
    records = VerificationRecords.read(output_dir / RECORDS_FILE)  # this folder's own, if any
    if choice.source == "split_file":
        frame, report, listed = _reused_split(settings, records)
    else:
        frame, report, listed = _new_split(settings, records)
    if target.is_file() and split_digest(read_split_file(target, settings.classes)) != split_digest(frame):
        raise ConfigError("data.split_file", str(settings.split_file), f"the same split as the one already in {target}")
    records.subset(listed).write(output_dir / RECORDS_FILE)
    write_csv(frame, target)
    write_report(report, output_dir)
    log_summary(report, settings.classes)
    return target


def _reused_split(settings: IntakeSettings, records: VerificationRecords) -> tuple[pd.DataFrame, dict, list[str]]:
    """``data.split_file`` as it is (with ``data.folds``: the splits of this run's fold), its report,
    and the files it lists."""
    frame = read_split_file(settings.split_file, settings.classes)
    if settings.cv is not None:
        frame = with_fold_splits(frame, settings)
    records.update(VerificationRecords.read(Path(settings.split_file).parent / RECORDS_FILE))
    report = split_file_report(frame, settings, records)
    return frame, report, list(frame["file_path"])


def _new_split(settings: IntakeSettings, records: VerificationRecords) -> tuple[pd.DataFrame, dict, list[str]]:
    """A new split of ``data.root`` or ``data.annotations`` (``make_annotations``), its report, and
    every file the scan verified (also added to the ``data.verify_cache`` records)."""
    cached = cache_file(settings.verify_cache, settings.annotations or settings.root)
    records.update(VerificationRecords.read(cached))
    frame, report = make_annotations(settings, records)
    listed = _scanned_paths(report, frame, records)
    _merge_into_cache(cached, records.subset(listed))
    return frame, report, listed


def make_annotations(settings: IntakeSettings, records: VerificationRecords | None = None) -> tuple[pd.DataFrame, dict]:
    """Scan, verify, group duplicates, apply the duplicate policy and split.

    ``task=multilabel`` merges each duplicate group into one item with all its genres and splits
    by iterative stratification over the genre sets; ``single`` stratifies by the one label.
    With ``cv`` the items are assigned to folds first and the split is that of ``cv.fold``.
    Files unchanged since their record in ``records`` are not decoded again; ``records`` receives
    the outcome of every file decoded now. Returns the annotations table and the data report.
    """
    classes = settings.classes
    # before the scan: a typo must not cost a full scan
    options = check_duplicate_options(settings.duplicates, settings.task)
    result = scan(
        classes, settings.root, settings.annotations, settings.verify_workers, settings.min_image_side, records
    )
    frame, duplicates, merged = _resolve_duplicates(result, options, classes)
    report = result.report(classes)
    _check_some_image_is_usable(frame, settings)
    _check_every_genre_has_an_image(frame, report, settings)
    frame = _split(frame, settings)
    report["split"] = {
        "seed": settings.split_seed,
        "fractions": dict(settings.fractions),
        "task": settings.task,
        **split_summary(frame, classes, settings.task, settings.cv),
    }
    report["duplicates"] = {**duplicates, **affected_test_items(frame, duplicates), "merged": merged}
    return frame[COLUMNS], report


def _resolve_duplicates(
    result: ScanResult, options: dict[str, Any], classes: list[str]
) -> tuple[pd.DataFrame, dict[str, Any], list[dict[str, str]]]:
    """Group identical and near-identical images and apply the duplicate policy: the items kept (the
    table without split or fold), the report's duplicate summary and the merged files. ``result``
    then lists the kept records, and the dropped and merged files with their reasons."""
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
    frame = pd.DataFrame(
        {
            "file_path": pd.Series([paths[i] for i in outcome.keep], dtype=TEXT),
            "label": [labels[i] for i in outcome.keep],
            "sha256": [sha256[i] for i in outcome.keep],
            "group": [str(groups[i]) for i in outcome.keep],
            "labels": [outcome.labels.get(i, own_label_sets[i]) for i in outcome.keep],
        }
    )
    merged = [{"path": paths[i], "into": paths[j]} for i, j in outcome.merged]
    return frame, {**summary, **options}, merged


def _check_some_image_is_usable(frame: pd.DataFrame, settings: IntakeSettings) -> None:
    if frame.empty:
        if settings.annotations:
            raise ConfigError(
                "data.annotations", str(settings.annotations), "a CSV that lists at least one readable image"
            )
        raise ConfigError("data.root", str(settings.root), "a folder with readable images in its genre folders")


def _check_every_genre_has_an_image(frame: pd.DataFrame, report: dict, settings: IntakeSettings) -> None:
    """Every genre needs an image: under multilabel any genre of a poster counts (a genre that only
    appears beside another one is still learnt), otherwise its one label. Counted in the report."""
    covered = genre_rows(frame, settings.task)["label"].value_counts()
    for genre in settings.classes:
        report["per_class"][genre]["with_genre"] = int(covered.get(genre, 0))
    empty = [c for c in settings.classes if covered.get(c, 0) == 0]
    if empty:
        raise ConfigError(
            "data.classes", list(settings.classes), f"genres with at least one usable image (none for {empty})"
        )


def _split(frame: pd.DataFrame, settings: IntakeSettings) -> pd.DataFrame:
    """``frame`` with each item's fold (with ``data.folds``) and split."""
    items = split_items(frame, settings)
    if settings.cv:
        frame["fold"] = assign_folds(items, settings.cv, settings.split_seed)
        frame["split"] = fold_splits(list(frame["fold"]), items, settings.cv, settings.split_seed)
    else:
        frame["fold"] = ""
        frame["split"] = items.split(settings.fractions, settings.split_seed)
    return frame


def split_items(frame: pd.DataFrame, settings: IntakeSettings) -> SplitItems:
    """The rows of an annotations table as the items a split places."""
    label_sets = [s.split("|") for s in frame["labels"]]
    return SplitItems(list(frame["label"]), label_sets, list(frame["group"]), settings.multilabel)


def with_fold_splits(frame: pd.DataFrame, settings: IntakeSettings) -> pd.DataFrame:
    """``frame`` (a reused annotations.csv with a fold column) with the splits of fold ``cv.fold``."""
    check_fold_column(list(frame["fold"]), settings.cv, str(settings.split_file))
    frame = frame.copy()
    frame["split"] = fold_splits(list(frame["fold"]), split_items(frame, settings), settings.cv, settings.split_seed)
    return frame


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
    frame: pd.DataFrame, settings: IntakeSettings, records: VerificationRecords | None = None
) -> dict:
    """The data report of a reused split (``settings.split_file``): every listed file checked again,
    counted per genre.

    A file unchanged since its record in ``records`` keeps its outcome; any other is decoded again.
    The split itself is reused exactly (its rows are not changed); a file that no longer
    verifies is reported here and skipped, with its reason, when training reads it."""
    candidates = [Candidate(p, label) for p, label in zip(frame["file_path"], frame["label"], strict=True)]
    kept, skipped = verify_all(candidates, settings.verify_workers, settings.min_image_side, records)
    report = ScanResult(records=kept, skipped=skipped).report(settings.classes)
    report["split_file"] = str(Path(settings.split_file).resolve())
    report["split"] = {"task": settings.task, **split_summary(frame, settings.classes, settings.task, settings.cv)}
    if skipped:
        log.warning(
            "%d file(s) listed in %s no longer verify; the split is reused as it is", len(skipped), settings.split_file
        )
    return report
