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
