"""Find the poster files, verify each one, and say exactly what was kept and what was skipped.

Layout: ``root/<Genre>/**/<image>``. Images in sub-folders of a genre folder count for that
genre. Directory symlinks are not followed (a symlink loop cannot trap the scan) and are
listed as ignored; file symlinks are read through. Extensions match in any case (``.JPG``).
Nothing here writes to the data folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from genre_lightning.data.duplicates import perceptual_hash
from genre_lightning.data.imageio import (
    UnreadableImage,
    decode_rgb,
    read_image_bytes,
    too_small,
    unexpected_error_reason,
)
from genre_lightning.data.process_map import process_map, usable_cpus
from genre_lightning.data.verified import OK, FileStamp, VerificationRecords, Verified, stamp_of
from genre_lightning.utils.csvio import read_csv
from genre_lightning.utils.errors import ConfigError
from genre_lightning.utils.progress import tracked

log = logging.getLogger(__name__)

READ_ERROR = "cannot read file"  # the skip reason of an OSError while reading (imageio.read_image_bytes)
# Fewer files than this are decoded in this process: starting worker processes would cost more.
PROCESSES_FROM = 256
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


LABEL_SEPARATOR = "|"  # between the genres of a multi-genre item: "Action|Comedy"


@dataclass(frozen=True)
class Candidate:
    path: str
    label: str
    labels: str = ""  # every genre of the item, "A|B" (from a CSV's labels column); "" = just label


@dataclass(frozen=True)
class ImageRecord:
    """A verified image: where it is, its genre, its content hash and its perceptual hash."""

    path: str
    label: str
    sha256: str
    phash: str
    width: int
    height: int
    labels: str = ""  # "A|B" when the item's source named several genres; "" = just label


@dataclass(frozen=True)
class Skipped:
    path: str
    label: str | None
    reason: str


@dataclass
class ScanResult:
    records: list[ImageRecord]
    skipped: list[Skipped] = field(default_factory=list)
    ignored: list[Skipped] = field(default_factory=list)  # not images at all (wrong extension, ...)
    unknown_folders: list[str] = field(default_factory=list)
    # Files folded into another file's item by the multi_genre duplicate policy: neither kept nor skipped.
    merged: list[Skipped] = field(default_factory=list)

    def report(self, classes: Sequence[str]) -> dict:
        """The JSON-ready ``data_report.json`` content. Per genre, found = kept + skipped + merged."""
        kept = Counter(r.label for r in self.records)
        skipped = Counter(s.label for s in self.skipped)
        merged = Counter(s.label for s in self.merged)
        ignored = Counter(s.label for s in self.ignored)
        reasons = Counter(reason_kind(s.reason) for s in self.skipped)
        by_class_reason = Counter((s.label, reason_kind(s.reason)) for s in self.skipped)
        per_class = {
            c: {
                "found": kept.get(c, 0) + skipped.get(c, 0) + merged.get(c, 0),
                "kept": kept.get(c, 0),
                "skipped": skipped.get(c, 0),
                "skipped_by_reason": {r: by_class_reason[(c, r)] for r in sorted(reasons) if by_class_reason[(c, r)]},
                "merged": merged.get(c, 0),
                "ignored": ignored.get(c, 0),
            }
            for c in classes
        }
        return {
            "n_found": len(self.records) + len(self.skipped) + len(self.merged),
            "n_kept": len(self.records),
            "n_skipped": len(self.skipped),
            "n_merged": len(self.merged),
            "n_ignored": len(self.ignored),
            "n_outside_genre_folders": sum(s.label is None for s in self.ignored),
            "per_class": per_class,
            "skipped_by_reason": dict(sorted(reasons.items())),
            "skipped": [asdict(s) for s in self.skipped],
            "ignored": [asdict(s) for s in self.ignored],
            "unknown_folders": self.unknown_folders,
        }


def reason_kind(reason: str) -> str:
    """The part of a skip reason before its details: "corrupt image data: ..." -> "corrupt image data"."""
    return reason.split(":", 1)[0]


def find_candidates(root: str | Path, classes: Sequence[str]) -> tuple[list[Candidate], ScanResult]:
    """List image files under ``root/<class>/``; anything else is recorded, never used silently."""
    # Absolute: annotations.csv must name the same files from any working directory
    # (genre-eval, a resumed run, data.split_file); abspath keeps symlinked folders as named.
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise ConfigError("data.root", str(root), "an existing folder with one sub-folder per genre")
    try:
        entries = sorted(root.iterdir())
    except OSError as err:
        raise ConfigError("data.root", str(root), f"a folder we can read ({err.strerror or err})") from err
    folders = {p.name for p in entries if p.is_dir()}
    missing = [c for c in classes if c not in folders]
    if missing:
        raise ConfigError(
            "data.classes",
            list(classes),
            f"genres that exist as folders under {root} (missing: {missing}; found: {sorted(folders)})",
        )
    result = ScanResult(records=[], unknown_folders=sorted(folders - set(classes)))
    # An image next to the genre folders has no genre: say so instead of passing over it.
    result.ignored.extend(
        Skipped(str(p), None, "not inside a genre folder: images must be in data.root/<genre>/")
        for p in entries
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    candidates: list[Candidate] = []
    for label in classes:
        candidates.extend(_genre_candidates(root / label, label, result))
    return candidates, result


def _genre_candidates(folder: Path, label: str, result: ScanResult) -> list[Candidate]:
    """The image files of one genre folder; other files, directory links and unreadable folders go to ``result``."""
    candidates = []
    for path in walk_files(
        folder,
        on_directory_link=lambda p: result.ignored.append(Skipped(str(p), label, "directory symlink: not followed")),
        on_error=lambda err: result.skipped.append(
            Skipped(str(err.filename), label, f"cannot read folder: {err.strerror or err}")
        ),
    ):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            candidates.append(Candidate(str(path), label))
        else:
            result.ignored.append(Skipped(str(path), label, f"not an image extension: {path.suffix!r}"))
    return candidates


def walk_files(
    folder: Path,
    on_directory_link: Callable[[Path], None] | None = None,
    on_error: Callable[[OSError], None] | None = None,
) -> Iterable[Path]:
    """Files under ``folder``, sorted, sub-folders included; directory symlinks are not entered.

    ``on_error`` receives the error of each folder that cannot be listed (os.walk would
    otherwise skip it, and every file in it, without a word)."""
    # followlinks=False: a directory symlink is never entered, so a loop cannot trap us.
    for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error, followlinks=False):
        dirnames.sort()
        if on_directory_link is not None:
            for name in dirnames:
                if (Path(dirpath) / name).is_symlink():
                    on_directory_link(Path(dirpath) / name)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def read_candidates_csv(csv_path: str | Path, classes: Sequence[str]) -> list[Candidate]:
    """Read ``file_path,label`` rows, or ``file_path,labels`` with genres joined by ``|`` (multi-label;
    ``label`` is then the first of them); relative paths are relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ConfigError("data.annotations", str(csv_path), "an existing CSV file with file_path,label columns")
    # Our own annotations.csv keeps non-UTF-8 file names byte-exact (surrogateescape): read it the same way.
    frame = read_csv(csv_path)
    if "file_path" not in frame.columns or not {"label", "labels"} & set(frame.columns):
        raise ConfigError(
            "data.annotations",
            str(csv_path),
            f"a CSV with columns file_path and label (or labels, genres joined by '|'); found {list(frame.columns)}",
        )
    if "labels" in frame.columns:
        label_sets = [
            split_labels(value, classes, f"{csv_path.name} row {row + 2}") for row, value in enumerate(frame["labels"])
        ]
        first = list(frame["label"]) if "label" in frame.columns else [labels[0] for labels in label_sets]
        joined = [LABEL_SEPARATOR.join(labels) for labels in label_sets]
    else:
        first, joined = list(frame["label"]), [""] * len(frame)
    unknown = sorted(set(first) - set(classes))
    if unknown:
        raise ConfigError(
            "data.classes", list(classes), f"a list that includes every label in {csv_path.name} (also found {unknown})"
        )
    return [
        Candidate(os.path.abspath(csv_path.parent / p), label, labels)
        for p, label, labels in zip(frame["file_path"], first, joined, strict=True)
    ]


def split_labels(value: object, classes: Sequence[str], where: str) -> list[str]:
    """The genres of one ``labels`` cell (``"Action|Comedy"``), in ``classes`` order; a genre that is
    not in ``classes``, or an empty cell, is a one-line error naming ``where`` (the CSV row)."""
    names = [name.strip() for name in str(value if isinstance(value, str) else "").split(LABEL_SEPARATOR)]
    names = [name for name in names if name]
    unknown = [name for name in names if name not in classes]
    if unknown or not names:
        raise ConfigError(
            "data.annotations",
            f"{where}: {value!r}",
            f"genres from data.classes {list(classes)} joined by '{LABEL_SEPARATOR}'"
            + (f" (unknown: {unknown})" if unknown else " (the cell is empty)"),
        )
    return sorted(set(names), key=list(classes).index)


def verify(candidate: Candidate, min_side: int = 1) -> ImageRecord | Skipped:
    """Decode the file fully (the only reliable test of a JPEG) and hash its bytes and its looks.

    Never raises for a bad file: one file a decoder chokes on in an unforeseen way must not
    stop the scan."""
    return as_outcome(candidate, decode_outcome(candidate.path, None), min_side)


def decode_outcome(path: str, stamp: FileStamp | None) -> Verified:
    """What a full decode of ``path`` finds, as a verification record (``stamp`` taken before the
    read, so a file that changes while it is read is decoded again next time)."""
    try:
        data = read_image_bytes(path)
        image = decode_rgb(data, path)
        return Verified(stamp, hashlib.sha256(data).hexdigest(), perceptual_hash(image), image.width, image.height)
    except UnreadableImage as err:
        return Verified(stamp, outcome=str(err))
    except Exception as err:  # last resort: skip the file with the error's type and message
        return Verified(stamp, outcome=unexpected_error_reason(err))


def _decode_stamped(item: tuple[str, FileStamp | None]) -> Verified:
    return decode_outcome(*item)


def as_outcome(candidate: Candidate, record: Verified, min_side: int) -> ImageRecord | Skipped:
    """The scan's verdict on ``candidate`` from its verification record (``min_side`` applied here, so a
    record serves any ``data.min_image_side``)."""
    if record.outcome != OK:
        return Skipped(candidate.path, candidate.label, record.outcome)
    reason = too_small(record.width, record.height, min_side)
    if reason is not None:
        return Skipped(candidate.path, candidate.label, reason)
    return ImageRecord(
        candidate.path, candidate.label, record.sha256, record.phash, record.width, record.height, candidate.labels
    )


def verify_all(
    candidates: Sequence[Candidate],
    workers: int | None = None,
    min_side: int = 1,
    records: VerificationRecords | None = None,
) -> tuple[list[ImageRecord], list[Skipped]]:
    """Verify candidates: files unchanged since a record in ``records`` are not decoded again; the
    others are decoded in ``workers`` processes (None: every usable CPU; a small batch in this
    process). ``records`` (if given) receives the new outcomes."""
    stamps = [stamp_of(c.path) for c in candidates]
    records_in = records if records is not None else VerificationRecords()
    known = [records_in.lookup(c.path, s) for c, s in zip(candidates, stamps, strict=True)]
    todo = [i for i, record in enumerate(known) if record is None]
    work = [(candidates[i].path, stamps[i]) for i in todo]
    workers = max(1, workers or usable_cpus())
    if workers > 1 and len(work) >= PROCESSES_FROM:
        fresh = process_map(_decode_stamped, work, workers)
    else:
        fresh = map(_decode_stamped, work)
    for i, record in zip(todo, tracked(fresh, len(work), "verify", "files"), strict=True):
        known[i] = record
        # A read error may pass (a network file system's hiccup): only decoding outcomes are kept.
        if records is not None and record.stamp is not None and not record.outcome.startswith(READ_ERROR):
            records.add(candidates[i].path, record)
    if len(candidates) > len(work):
        log.info(
            "Verified %d files: %d unchanged since their verification record, %d decoded",
            len(candidates), len(candidates) - len(work), len(work),
        )  # fmt: skip
    outcomes = [as_outcome(c, r, min_side) for c, r in zip(candidates, known, strict=True)]
    records_out = [o for o in outcomes if isinstance(o, ImageRecord)]
    skipped = [o for o in outcomes if isinstance(o, Skipped)]
    return records_out, skipped


def scan(
    classes: Sequence[str],
    root: str | Path | None = None,
    annotations: str | Path | None = None,
    workers: int | None = None,
    min_side: int = 1,
    records: VerificationRecords | None = None,
) -> ScanResult:
    """Scan genre folders (``root``) or an annotation CSV, and verify every image (see ``verify_all``)."""
    if annotations:
        candidates, result = read_candidates_csv(annotations, classes), ScanResult(records=[])
    elif root:
        candidates, result = find_candidates(root, classes)
    else:
        raise ConfigError("data.root", None, "a folder of genre sub-folders (or set data.annotations=<csv>)")
    result.records, skipped = verify_all(candidates, workers, min_side, records)
    result.skipped.extend(skipped)  # after the folders the walk could not read
    return result
