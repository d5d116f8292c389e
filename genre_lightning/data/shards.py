"""Streaming shards: the verified, split data set as LitData chunks, for data that outgrows a folder.

``genre-data ... shards=<dir>`` writes, per split, ``<dir>/<split>/`` in LitData's format (chunk
files and an ``index.json``, as its ``optimize`` writes them). Each item holds the image file's
bytes exactly as they were verified (decoded later by the same ``decode_rgb`` as a folder's
files), its row in the split, its content hash and its path. Beside them: the split
(``annotations.csv``), its data report and ``shards.json``. ``data.shards=<dir>`` then trains and
evaluates from the chunks, with the same split, transforms and metrics as from the folders.
``<dir>`` is a folder every rank can read (a local disk, or a shared file system on a cluster):
a few large chunk files instead of a million small ones.

LitData (Lightning's own format, DDP- and multi-node-aware, random access by index through its
chunk index) rather than WebDataset, whose tar shards are read in sequence only: here every item
keeps its index, so the data module's samplers (shuffling, balanced sampling, DDP shards without
padding) work on shards exactly as on folders. LitData is an optional extra:
``pip install "genre-lightning[shards]"``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from genre_lightning.data.dataset import PosterDataset
from genre_lightning.data.imageio import UnreadableImage, decode_rgb, read_image_bytes
from genre_lightning.data.stratify import SPLITS
from genre_lightning.utils.csvio import write_csv
from genre_lightning.utils.errors import ConfigError, UserFacingError

log = logging.getLogger(__name__)

SHARDS_FILE = "shards.json"
SPLIT_FILE = "annotations.csv"
CHUNK_BYTES = "64MB"


def require_litdata() -> Any:
    try:
        import litdata
    except ImportError as err:
        raise UserFacingError(
            'streaming shards need LitData: pip install "genre-lightning[shards]" (or: pip install litdata)'
        ) from err
    return litdata


def shard_item(index: int, path: str, sha256: str) -> dict[str, Any]:
    """One item of a shard: the file's bytes (empty, with the reason, if it no longer reads)."""
    try:
        data, reason = read_image_bytes(path), ""
    except UnreadableImage as err:
        data, reason = b"", str(err)
    return {"index": index, "image": data, "reason": reason, "sha256": sha256, "path": os.fsencode(path)}


def write_shards(frame: pd.DataFrame, folder: str | Path, report: Mapping | None = None) -> dict:
    """Write every split of ``frame`` (an ``annotations.csv``) as LitData chunks under ``folder``.

    LitData's ``BinaryWriter`` (what its ``optimize`` runs in each worker) in this process: copying
    bytes needs no worker processes, and ``optimize`` would start them (spawned: a new interpreter
    importing torch) once per split."""
    litdata = require_litdata()
    from litdata.streaming.writer import BinaryWriter

    folder = Path(os.path.abspath(folder))
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError("shards", str(folder), "a new or empty folder (shards are written once, not mixed)")
    summary: dict[str, Any] = {"format": "litdata", "litdata": litdata.__version__, "splits": {}}
    for split in SPLITS:
        rows = frame[frame["split"] == split]
        if rows.empty:
            continue
        (folder / split).mkdir(parents=True)
        writer = BinaryWriter(str(folder / split), chunk_bytes=CHUNK_BYTES)
        unreadable = 0
        for index, row in enumerate(zip(rows["file_path"], rows["sha256"], strict=True)):
            item = shard_item(index, *row)
            unreadable += not item["image"]
            writer[index] = item
        writer.done()
        writer.merge()
        summary["splits"][split] = {
            "items": len(rows),
            "unreadable": unreadable,
            "bytes": sum(f.stat().st_size for f in (folder / split).glob("*.bin")),
        }
    write_csv(frame, folder / SPLIT_FILE)
    if report is not None:
        (folder / "data_report.json").write_text(json.dumps(report, indent=2))
    (folder / SHARDS_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def shards_split(folder: str | Path) -> Path:
    """The split the shards in ``folder`` hold (its ``annotations.csv``); a one-line error if there is none."""
    split = Path(folder) / SPLIT_FILE
    if not split.is_file() or not (Path(folder) / SHARDS_FILE).is_file():
        raise ConfigError("data.shards", str(folder), f"a folder written by genre-data shards=<dir> (no {SPLIT_FILE})")
    return split


def copy_shards_split(folder: str | Path, target: Path) -> None:
    """Put the shards' split (and data report) into a run folder, as its ``annotations.csv``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shards_split(folder), target)
    report = Path(folder) / "data_report.json"
    if report.is_file():
        shutil.copyfile(report, target.parent / "data_report.json")


class ShardDataset(PosterDataset):
    """A split read from LitData chunks: the same items as ``PosterDataset`` on the same rows (``paths``,
    ``targets``, ``keys`` and label sets from the split), the pixels from the shard's bytes."""

    def __init__(self, folder: str | Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder = str(folder)
        self._stream: Any = None  # opened on first use, in whichever process (loader worker) reads

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None}

    def read_image(self, index: int) -> Image.Image:
        if self._stream is None:
            self._stream = require_litdata().StreamingDataset(self.folder)
            if len(self._stream) != len(self.paths):
                raise ConfigError("data.shards", self.folder, f"shards of {len(self.paths)} items, as the split lists")
        item = self._stream[index]
        if item["index"] != index:  # the chunks are not in the split's order: never train on wrong labels
            raise ConfigError("data.shards", self.folder, "shards written by genre-data (item order differs)")
        if not item["image"]:
            raise UnreadableImage(item["reason"])
        return decode_rgb(item["image"], self.paths[index])
