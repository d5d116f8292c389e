"""Decoded-image cache: each poster decoded and downscaled once, then read back as raw pixels.

The first epoch decodes the JPEG and shrinks it (aspect kept) until its shorter side is the
smallest that still covers the model's input with the augmentation margin; the uint8 pixels
go to ``<cache_dir>/decoded/<side>px/<sha256>.npy``. Later epochs, and later runs of a sweep
with the same input size, read that array instead of decoding again. Keys are content
hashes, so an edited image gets a new entry; the transforms after the resize run as usual.
Writes are atomic (temp file + rename), so dataloader workers and DDP ranks can share it.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genre_lightning.data.imageio import read_rgb

# Random-resized crops and flips need some room around the final input size.
AUGMENT_MARGIN = 1.15


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
        """The image at ``path`` (content hash ``key``), from the cache when it is there."""
        entry = self.folder / f"{key}.npy"
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
