"""The run's ``annotations.csv`` (file_path, label, split, sha256) and ``data_report.json``.

``prepare_annotations`` is the one place a split is made or reused. Training, evaluation
and ``genre-data`` all call it, so they agree on what "the split" is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from genre_lightning.data.scan import scan
from genre_lightning.data.split import SPLITS, stratified_group_split
from genre_lightning.errors import ConfigError

log = logging.getLogger(__name__)

ANNOTATIONS_FILE = "annotations.csv"
REPORT_FILE = "data_report.json"
COLUMNS = ["file_path", "label", "split", "sha256"]


def read_split_file(path: str | Path, classes: Sequence[str], key: str = "data.split_file") -> pd.DataFrame:
    """Read an ``annotations.csv`` and check it can be used as-is: columns, labels, splits, files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), "an existing annotations.csv with file_path,label,split columns")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"file_path", "label", "split"} - set(frame.columns)
    if missing:
        raise ConfigError(key, str(path), f"a CSV with file_path,label,split columns (missing {sorted(missing)})")
    unknown_labels = sorted(set(frame["label"]) - set(classes))
    if unknown_labels:
        raise ConfigError(
            "data.classes", list(classes), f"a list that includes every label in {path} (also found {unknown_labels})"
        )
    unknown_splits = sorted(set(frame["split"]) - set(SPLITS))
    if unknown_splits:
        raise ConfigError(key, str(path), f"split values among {list(SPLITS)} (found {unknown_splits})")
    gone = [p for p in frame["file_path"] if not Path(p).is_file()]
    if gone:
        raise ConfigError(key, str(path), f"a split whose files exist ({len(gone)} missing, e.g. {gone[0]!r})")
    if "sha256" not in frame.columns:
        frame["sha256"] = ""
    return frame[COLUMNS]


def split_digest(frame: pd.DataFrame) -> str:
    """A short fingerprint of a split, stored in checkpoints to catch a resume on another split."""
    rows = frame.sort_values("file_path")[["file_path", "label", "split"]].to_csv(index=False)
    return hashlib.sha256(rows.encode()).hexdigest()[:16]


def make_annotations(
    classes: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
    root: str | Path | None = None,
    annotations: str | Path | None = None,
    verify_threads: int = 4,
) -> tuple[pd.DataFrame, dict]:
    """Scan, verify and split. Returns the annotations table and the data report."""
    result = scan(classes, root=root, annotations=annotations, num_threads=verify_threads)
    report = result.report(classes)
    if not result.records:
        raise ConfigError("data.root", str(root or annotations), "a folder with at least one readable image per genre")
    empty = [c for c in classes if report["per_class"][c]["kept"] == 0]
    if empty:
        raise ConfigError("data.classes", list(classes), f"genres with at least one readable image (none for {empty})")
    records = sorted(result.records, key=lambda r: r.path)
    frame = pd.DataFrame(
        {
            "file_path": [r.path for r in records],
            "label": [r.label for r in records],
            "sha256": [r.sha256 for r in records],
        }
    )
    frame["split"] = stratified_group_split(list(frame["label"]), list(frame["sha256"]), fractions, seed)
    report["split"] = {"seed": seed, "fractions": dict(fractions), "counts": _split_counts(frame, classes)}
    return frame[COLUMNS], report


def _split_counts(frame: pd.DataFrame, classes: Sequence[str]) -> dict:
    table = frame.groupby(["split", "label"]).size()
    return {s: {c: int(table.get((s, c), 0)) for c in classes} for s in SPLITS}


def prepare_annotations(
    output_dir: str | Path,
    classes: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
    root: str | Path | None = None,
    annotations: str | Path | None = None,
    split_file: str | Path | None = None,
    verify_threads: int = 4,
) -> Path:
    """Write ``annotations.csv`` and ``data_report.json`` into ``output_dir`` and return the CSV path.

    An existing ``annotations.csv`` in ``output_dir`` is kept (a resumed or requeued run
    must see the split it started with). ``split_file`` reuses another run's split exactly.
    """
    output_dir = Path(output_dir)
    target = output_dir / ANNOTATIONS_FILE
    if target.is_file() and not split_file:
        log.info("Reusing the split already in this run folder: %s", target)
        return target
    output_dir.mkdir(parents=True, exist_ok=True)
    if split_file:
        frame = read_split_file(split_file, classes)
        report = {
            "split_file": str(Path(split_file).resolve()),
            "n_kept": len(frame),
            "split": {"counts": _split_counts(frame, classes)},
        }
    else:
        frame, report = make_annotations(classes, fractions, seed, root, annotations, verify_threads)
    if target.is_file() and split_digest(read_split_file(target, classes)) != split_digest(frame):
        raise ConfigError("data.split_file", str(split_file), f"the same split as the one already in {target}")
    _write_atomic(target, frame.to_csv(index=False))
    _write_atomic(output_dir / REPORT_FILE, json.dumps(report, indent=2))
    _log_summary(report, classes)
    return target


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _log_summary(report: dict, classes: Sequence[str]) -> None:
    counts = report["split"]["counts"]
    log.info(
        "Split (train/val/test): %s",
        ", ".join(f"{c} {counts['train'][c]}/{counts['val'][c]}/{counts['test'][c]}" for c in classes),
    )
    if report.get("n_skipped"):
        log.warning(
            "Skipped %d unreadable file(s); reasons in %s: %s",
            report["n_skipped"],
            REPORT_FILE,
            report["skipped_by_reason"],
        )
