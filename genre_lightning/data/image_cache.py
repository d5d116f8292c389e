"""Decoded-image cache: each poster decoded and downscaled once, then read back as raw pixels.

The first epoch decodes the JPEG and shrinks it (aspect kept) until its shorter side is the
smallest that still covers the model's input with the augmentation margin; the uint8 pixels
go to ``<cache_dir>/decoded/<side>px/<key>.npy``. Later epochs, and later runs of a sweep
with the same input size, read that array instead of decoding again; the transforms after the
resize run as usual. Writes are atomic (temp file + rename), so dataloader workers and DDP
ranks can share it.

Entry names are always hex digests (see ``cache_key``): the image's content hash when the
split file has one, else a digest of its path, size and modification time. So an edited image
gets a new entry, and an entry never lands outside the cache folder.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genre_lightning.data.imageio import read_rgb

# Random-resized crops and flips need some room around the final input size.
AUGMENT_MARGIN = 1.15
_CONTENT_HASH = re.compile(r"[0-9a-fA-F]{64}")


def cache_key(path: str | Path, key: str) -> str:
    """The hex digest that names an image's cache entries.

    ``key`` is the image's sha256 from the split file, or (a split file with only
    file_path,label,split) its path. A path is not a safe file name and says nothing about the
    content, so then the name is a digest of the absolute path, size and mtime: an edited file
    misses the cache instead of being served stale pixels or features.
    """
    if _CONTENT_HASH.fullmatch(key):
        return key.lower()
    try:
        info = os.stat(path)
        stamp = f"{info.st_size}:{info.st_mtime_ns}"
    except OSError:  # gone or unreadable: decoding reports it; the name only has to be unique
        stamp = "unreadable"
    text = "\0".join((key, os.path.abspath(path), stamp))
    return hashlib.sha256(text.encode(errors="surrogateescape")).hexdigest()


def cover_side(data_config: Mapping[str, Any], augmented: bool) -> int:
    """The shorter side a cached image needs so every later transform only ever shrinks it."""
    _, height, width = data_config["input_size"]
    crop_pct = data_config.get("crop_pct") or 1.0
    return math.ceil(max(height, width) / crop_pct * (AUGMENT_MARGIN if augmented else 1.0))


class DecodedImageCache:
    def __init__(self, cache_dir: str | Path, side: int) -> None:
        self.side = side
        self.folder = Path(cache_dir) / "decoded" / f"{side}px"

    def load(self, path: str, key: str) -> Image.Image:
        """The image at ``path`` (content hash or path ``key``), from the cache when it is there."""
        entry = self.folder / f"{cache_key(path, key)}.npy"
        try:
            return Image.fromarray(np.load(entry))
        except (FileNotFoundError, ValueError, OSError):  # not cached yet, or a torn file from a crash
            pass
        image = self._shrink(read_rgb(path))
        self._store(entry, np.asarray(image))
        return image

    def _shrink(self, image: Image.Image) -> Image.Image:
        scale = self.side / min(image.size)
        if scale >= 1:  # never enlarge: the transforms do that, once
            return image
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.Resampling.BICUBIC)

    def _store(self, entry: Path, pixels: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.save(file, pixels)
            os.replace(tmp, entry)
        except OSError:
            Path(tmp).unlink(missing_ok=True)  # a full disk only costs the cache, never the run
