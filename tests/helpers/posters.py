"""Poster folders the tests change: copies of generated posters, and edits as an image editor makes them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def copy_posters(source: Path, target: Path) -> list[Path]:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.json"))
    return sorted(target.rglob("*.jpg"))


def edit_image(path: Path, replacement: Path) -> None:
    """Overwrite ``path`` with another picture, as an editor would (new bytes, a later mtime)."""
    before = path.stat().st_mtime_ns
    path.write_bytes(replacement.read_bytes())
    os.utime(path, ns=(before + 10**9, before + 10**9))


QUADRANT_CUES = {  # one colour per genre: the only thing that tells the genres apart
    "Action": (255, 140, 0),
    "Comedy": (30, 90, 255),
    "Horror": (200, 0, 0),
    "Romance": (255, 80, 200),
}


def quadrant_posters(root: Path, per_genre: int, side: int = 64, seed: int = 0) -> dict[str, tuple[int, int]]:
    """Square posters of grey noise whose genre cue (a disc of the genre's colour) sits in one random
    quadrant; returns ``{path: (row half, column half)}`` of the cue, each 0 (top/left) or 1."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    where = {}
    for genre, colour in QUADRANT_CUES.items():
        (root / genre).mkdir(parents=True, exist_ok=True)
        for i in range(per_genre):
            pixels = rng.normal(128, 40, (side, side, 3)).clip(0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            row, column = int(rng.integers(2)), int(rng.integers(2))
            half, radius = side // 2, side * rng.uniform(0.12, 0.18)
            x = column * half + rng.uniform(radius, half - radius)
            y = row * half + rng.uniform(radius, half - radius)
            ImageDraw.Draw(image).ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
            path = root / genre / f"{genre.lower()}_{i:03d}.jpg"
            image.save(path, quality=92)
            where[str(path)] = (row, column)
    return where
