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
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from genre_lightning.data.dataset import PosterDataset
from genre_lightning.data.imageio import UnreadableImage, decode_rgb, read_image_bytes
from genre_lightning.data.stratify import SPLITS
from genre_lightning.utils.csvio import read_csv, write_csv
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


def check_shards_target(folder: str | Path, key: str = "shards") -> Path:
    """``folder`` as an absolute path, if shards can be written there: a new or empty folder whose
    nearest existing parent is a folder this process may write into. Writes nothing."""
    folder = Path(os.path.abspath(folder))
    if folder.is_dir():
        if any(folder.iterdir()):
            raise ConfigError(key, str(folder), "a new or empty folder (shards are written once, not mixed)")
        return folder
    if folder.exists() or folder.is_symlink():
        raise ConfigError(key, str(folder), "a new or empty folder, not an existing file")
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        what = "a file" if parent.exists() and not parent.is_dir() else "not writable"
        raise ConfigError(key, str(folder), f"a folder that can be created ({parent} is {what})")
    return folder


def write_shards(frame: pd.DataFrame, folder: str | Path, report: Mapping | None = None) -> dict:
    """Write every split of ``frame`` (an ``annotations.csv``) as LitData chunks under ``folder``.

    LitData's ``BinaryWriter`` (what its ``optimize`` runs in each worker) in this process: copying
    bytes needs no worker processes, and ``optimize`` would start them (spawned: a new interpreter
    importing torch) once per split."""
    litdata = require_litdata()
    from litdata.streaming.writer import BinaryWriter

    folder = check_shards_target(folder)
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


def is_shards_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``genre-data shards=<dir>``."""
    return (Path(path) / SHARDS_FILE).is_file()


def shards_split(folder: str | Path, key: str = "data.shards") -> Path:
    """The split the shards in ``folder`` hold (its ``annotations.csv``); a one-line error naming
    ``key`` if there is none."""
    split = Path(folder) / SPLIT_FILE
    if not split.is_file() or not is_shards_folder(folder):
        raise ConfigError(key, str(folder), f"a folder written by genre-data shards=<dir> (no {SPLIT_FILE})")
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

    def __init__(self, folder: str | Path, *args: Any, key: str = "data.shards", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder = str(folder)
        self.key = key  # the setting an error names (genre-predict's ShardImages: input)
        self._stream: Any = None  # opened on first use, in whichever process (loader worker) reads
        # genre-predict's decode threads share one dataset: the stream is opened and read by one
        # thread at a time (a read is a copy of bytes; the decoding, the costly part, runs in parallel).
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def read_bytes(self, index: int) -> bytes:
        """Item ``index``'s image bytes as they were verified (``UnreadableImage`` if they were not)."""
        with self._lock:
            if self._stream is None:
                stream = require_litdata().StreamingDataset(self.folder)
                if len(stream) != len(self.paths):
                    raise ConfigError(self.key, self.folder, f"shards of {len(self.paths)} items, as the split lists")
                self._stream = stream
            item = self._stream[index]
        if item["index"] != index:  # the chunks are not in the split's order: never train on wrong labels
            raise ConfigError(self.key, self.folder, "shards written by genre-data (item order differs)")
        if not item["image"]:
            raise UnreadableImage(item["reason"])
        return item["image"]

    def read_image(self, index: int) -> Image.Image:
        return decode_rgb(self.read_bytes(index), self.paths[index])


class ShardImages:
    """The images of a shards folder as genre-predict reads them: listed by the path each was
    verified under (the CSV's ``file_path``, so ``resume=true`` works as on a folder), in the
    split's order, and decoded from the chunks (the image files need not exist any more).

    ``split``: ``all`` (train, val, test, ... in that order) or one split's name."""

    def __init__(self, folder: str | Path, split: str = "all") -> None:
        frame = read_csv(shards_split(folder, "input"))
        present = list(frame["split"].drop_duplicates())
        order = [s for s in SPLITS if s in present] + sorted(set(present) - set(SPLITS))
        if split != "all" and split not in order:
            raise ConfigError("split", split, f"all or a split the shards hold: {order}")
        self.others = 0  # what ImageFiles counts: here every item is an image
        self.splits = {
            name: ShardDataset(
                Path(folder) / name, list(frame.loc[frame["split"] == name, "file_path"]), [], None, key="input"
            )
            for name in (order if split == "all" else [split])
        }
        self._where = {path: (name, i) for name, d in self.splits.items() for i, path in enumerate(d.paths)}

    def __iter__(self) -> Iterator[str]:
        for dataset in self.splits.values():
            yield from dataset.paths

    def dataset(self, paths: Sequence[str], transform: Callable) -> PosterDataset:
        """``paths`` (listed by this object) as a dataset whose pixels come from the shards."""
        return _ShardItems([self._where[p] for p in paths], self.splits, paths, transform)


class _ShardItems(PosterDataset):
    """Items of several splits' shards: item ``i`` is ``splits[split][position]`` for ``where[i]``."""

    def __init__(
        self,
        where: list[tuple[str, int]],
        splits: Mapping[str, ShardDataset],
        paths: Sequence[str],
        transform: Callable,
    ) -> None:
        super().__init__(paths, [0] * len(paths), transform)
        self.where = where
        self.splits = splits

    def read_image(self, index: int) -> Image.Image:
        split, position = self.where[index]
        return self.splits[split].read_image(position)
