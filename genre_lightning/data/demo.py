"""Synthetic "posters" for the quick start and the tests: real JPEGs in genre folders.

Each genre has its own visual cues (palette, motif, layout), blurred by noise so a model
has to learn them: about a quarter of the posters borrow another genre's palette, motifs
vary in number, size and place, and every poster gets pixel noise and a fake title block.
A working pipeline learns them well above chance; a broken one (shuffled labels, wrong
normalisation, frozen weights) stays near 25%.

``two_genre`` adds multi-genre posters for ``data.task=multilabel``: each carries the motifs of two
genres and is filed, byte-identical, in both genre folders, as real posters of two genres are.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from genre_lightning.utils.errors import ConfigError

GENRES = ("Action", "Comedy", "Horror", "Romance")
GENERATOR_VERSION = 1

# (background RGB centre, motif RGB centre) per genre
_PALETTES = {
    "Action": ((200, 70, 20), (255, 210, 60)),
    "Comedy": ((250, 220, 70), (40, 120, 230)),
    "Horror": ((25, 25, 35), (170, 10, 20)),
    "Romance": ((240, 150, 190), (200, 20, 90)),
}
_PALETTE_SWAP_PROBABILITY = 0.25


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 35) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _draw_motif(
    draw: ImageDraw.ImageDraw, genre: str, rng: np.random.Generator, w: int, h: int, color, count: int | None = None
) -> None:
    for _ in range(count or int(rng.integers(2, 5))):
        x, y = rng.uniform(0.1, 0.9) * w, rng.uniform(0.15, 0.75) * h
        r = rng.uniform(0.08, 0.2) * w
        if genre == "Action":  # starbursts and diagonal streaks
            points = []
            for k in range(16):
                angle = k * math.pi / 8
                radius = r if k % 2 == 0 else r * 0.45
                points.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
            draw.polygon(points, fill=color)
            draw.line([(x - 2 * r, y + 2 * r), (x + 2 * r, y - 2 * r)], fill=color, width=max(1, w // 40))
        elif genre == "Comedy":  # round faces
            draw.ellipse([x - r, y - r, x + r, y + r], outline=color, width=max(1, w // 30))
            draw.arc([x - r / 2, y - r / 3, x + r / 2, y + r / 2], 20, 160, fill=color, width=max(1, w // 40))
        elif genre == "Horror":  # vertical drips from the top
            draw.rectangle([x - r / 4, 0, x + r / 4, y + r], fill=color)
            draw.ellipse([x - r / 3, y + r - r / 3, x + r / 3, y + r + r / 3], fill=color)
        else:  # Romance: hearts
            draw.ellipse([x - r, y - r / 2, x, y + r / 2], fill=color)
            draw.ellipse([x, y - r / 2, x + r, y + r / 2], fill=color)
            draw.polygon([(x - r, y), (x + r, y), (x, y + 1.3 * r)], fill=color)


def draw_poster(
    genre: str, rng: np.random.Generator, size: tuple[int, int] = (96, 144), second: str | None = None
) -> Image.Image:
    """Draw one synthetic poster of ``genre`` (width, height = ``size``); with ``second``, two motifs
    of each of the two genres."""
    w, h = size
    palette_genre = genre
    if rng.random() < _PALETTE_SWAP_PROBABILITY:
        palette_genre = str(rng.choice([g for g in GENRES if g != genre]))
    background, motif = (_jitter(rng, c) for c in _PALETTES[palette_genre])
    image = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(image)
    if second is None:
        _draw_motif(draw, genre, rng, w, h, motif)
    else:
        _draw_motif(draw, genre, rng, w, h, motif, count=2)
        _draw_motif(draw, second, rng, w, h, _jitter(rng, _PALETTES[second][1]), count=2)
    # A fake title block: its place and shade carry no genre information.
    top = rng.uniform(0.78, 0.88) * h
    shade = int(rng.integers(0, 256))
    draw.rectangle([0.1 * w, top, rng.uniform(0.5, 0.9) * w, top + 0.06 * h], fill=(shade, shade, shade))
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 12, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def ensure_demo_posters(
    root: str | Path, per_class: int = 80, size: tuple[int, int] = (96, 144), seed: int = 0, two_genre: int = 0
) -> Path:
    """Write the demo set into ``root`` unless the same set is already there; return ``root``.

    ``two_genre``: per genre, this many extra posters that also carry a second genre (drawn in turn
    from the other three), each written into both genre folders."""
    root = Path(root)
    manifest = {"generator_version": GENERATOR_VERSION, "per_class": per_class, "size": list(size), "seed": seed}
    if two_genre:  # only when used: the single-label demo's manifest (and so its cached folder) is unchanged
        manifest["two_genre"] = two_genre
    manifest_path = root / "demo_manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return root
    # Replace only a folder this generator made (it has our manifest) or an empty one, never user
    # data; checked before drawing anything.
    if root.exists() and not manifest_path.is_file() and not (root.is_dir() and not any(root.iterdir())):
        raise ConfigError(
            "data.root",
            str(root),
            "an empty or missing folder, or one made by data=demo (it holds demo_manifest.json); "
            "this one holds other files, which are never overwritten",
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    rng = np.random.default_rng(seed)
    for genre in GENRES:
        (staging / genre).mkdir()
        for index in range(per_class):
            draw_poster(genre, rng, size).save(staging / genre / f"{genre.lower()}_{index:04d}.jpg", quality=90)
    for genre in GENRES:
        partners = [g for g in GENRES if g != genre]
        for index in range(two_genre):
            second = partners[index % len(partners)]
            name = f"{genre.lower()}_{second.lower()}_{index:04d}.jpg"
            draw_poster(genre, rng, size, second).save(staging / genre / name, quality=90)
            shutil.copyfile(staging / genre / name, staging / second / name)  # byte-identical: one poster
    (staging / manifest_path.name).write_text(json.dumps(manifest, indent=2))
    if manifest_path.is_file():
        shutil.rmtree(root)
    staging.rename(root)  # onto a missing or an empty folder
    return root
