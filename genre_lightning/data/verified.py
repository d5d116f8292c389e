"""Verification records: what decoding each file found, so unchanged files are never decoded twice.

One row per file: its path, size, modification and change times (ns), and the outcome of the
full decode: the SHA-256 of its bytes, its perceptual hash and size in pixels, or the reason it
could not be used. A file whose size, mtime and ctime still match its row is taken as verified
(the check ``git`` and ``make`` rely on; ctime cannot be set back by a program, so an edit that
restores the mtime is caught too); anything else is decoded again.

The records are written as ``verified.csv`` beside every ``annotations.csv`` (so a reused split,
a sweep's jobs, a resume and ``genre-eval`` read its files' outcomes instead of decoding them),
and merged into ``data.verify_cache`` (one file per data source, for a later new split of the
same folder). Nothing is written beside the images.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from genre_lightning.utils.csvio import TEXT, read_csv, write_csv

log = logging.getLogger(__name__)

RECORDS_FILE = "verified.csv"
COLUMNS = ["path", "size", "mtime_ns", "ctime_ns", "sha256", "phash", "width", "height", "outcome"]
OK = ""  # the outcome of a file that decoded (anything else is the reason it was skipped)


@dataclass(frozen=True)
class FileStamp:
    """What must be unchanged for a record to stand for the file."""

    size: int
    mtime_ns: int
    ctime_ns: int


@dataclass(frozen=True)
class Verified:
    """The outcome of decoding one file at the time of ``stamp``."""

    stamp: FileStamp
    sha256: str = ""
    phash: str = ""
    width: int = 0
    height: int = 0
    outcome: str = OK


def stamp_of(path: str) -> FileStamp | None:
    """The file's size and times, or None when it cannot be stat-ed (decoding then says why)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return FileStamp(info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class VerificationRecords:
    """Records by absolute path; ``lookup`` only returns one whose stamp matches the file now."""

    def __init__(self, by_path: Mapping[str, Verified] | None = None) -> None:
        self.by_path: dict[str, Verified] = dict(by_path or {})

    def __len__(self) -> int:
        return len(self.by_path)

    def lookup(self, path: str, stamp: FileStamp | None) -> Verified | None:
        record = self.by_path.get(path)
        return record if record is not None and stamp is not None and record.stamp == stamp else None

    def add(self, path: str, record: Verified) -> None:
        self.by_path[path] = record

    def update(self, other: VerificationRecords) -> None:
        self.by_path.update(other.by_path)

    def subset(self, paths: Iterable[str]) -> VerificationRecords:
        return VerificationRecords({p: self.by_path[p] for p in paths if p in self.by_path})

    @classmethod
    def read(cls, path: str | Path | None) -> VerificationRecords:
        """The records in ``path``; none when it is missing or unreadable (they only save work)."""
        if path is None or not Path(path).is_file():
            return cls()
        try:
            frame = read_csv(path)
            numbers = {c: pd.to_numeric(frame[c]).astype("int64") for c in COLUMNS[1:4] + ["width", "height"]}
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as err:
            log.warning("Ignoring verification records in %s (%s): their files are decoded again", path, err)
            return cls()
        records = {
            p: Verified(FileStamp(int(s), int(m), int(c)), sha, ph, int(w), int(h), outcome)
            for p, s, m, c, sha, ph, w, h, outcome in zip(
                frame["path"], numbers["size"], numbers["mtime_ns"], numbers["ctime_ns"], frame["sha256"],
                frame["phash"], numbers["width"], numbers["height"], frame["outcome"], strict=True,
            )
        }  # fmt: skip
        return cls(records)

    def write(self, path: str | Path) -> None:
        """Write atomically (temp file + rename): readers never see half a file."""
        items = sorted(self.by_path.items())
        frame = pd.DataFrame(
            {
                "path": pd.Series([p for p, _ in items], dtype=TEXT),
                "size": [r.stamp.size for _, r in items],
                "mtime_ns": [r.stamp.mtime_ns for _, r in items],
                "ctime_ns": [r.stamp.ctime_ns for _, r in items],
                "sha256": [r.sha256 for _, r in items],
                "phash": [r.phash for _, r in items],
                "width": [r.width for _, r in items],
                "height": [r.height for _, r in items],
                "outcome": [r.outcome for _, r in items],
            },
            columns=COLUMNS,
        )
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_csv(frame, path)


def cache_file(cache_dir: str | Path | None, source: str | Path | None) -> Path | None:
    """The records file of one data source (a ``data.root`` folder or ``data.annotations`` CSV) in
    ``cache_dir``, named by a digest of its absolute path; None without a cache folder."""
    if not cache_dir or not source:
        return None
    digest = hashlib.sha256(os.path.abspath(source).encode(errors="surrogateescape")).hexdigest()[:20]
    return Path(cache_dir) / f"{digest}.csv"
