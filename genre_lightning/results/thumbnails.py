"""Posters as the grids of the reports show them: a thumbnail of the file and a short caption name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genre_lightning.data.imageio import UnreadableImage, read_rgb

THUMBNAIL = 256  # longest side, in pixels, of a poster shown in a grid


def thumbnail(path: str) -> np.ndarray:
    """The poster at ``path`` shrunk to ``THUMBNAIL`` pixels on its longest side (a blank square if unreadable)."""
    try:
        image = read_rgb(path)
    except UnreadableImage:
        return np.ones((THUMBNAIL, THUMBNAIL, 3))
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return np.asarray(image)


def short_name(path: str, width: int = 28) -> str:
    """The file name, cut to ``width`` characters."""
    # A file name that is not UTF-8 (kept as surrogate escapes) cannot be drawn: show U+FFFD instead.
    name = Path(path).name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return name if len(name) <= width else name[: width - 3] + "..."
