"""A generated poster folder with every kind of mess a scraped data set has, and the outcome
each file must get: kept (and how it decodes), skipped (with which reason), or ignored."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from genre_lightning.data.demo import GENRES, draw_poster

NON_UTF8_NAME = b"caf\xe9 poster.jpg"  # Latin-1 bytes: not valid UTF-8


@dataclass
class Corpus:
    root: Path
    kept: set[str] = field(default_factory=set)  # relative paths (os.fsdecode'd)
    skipped: dict[str, str] = field(default_factory=dict)  # relative path -> reason kind
    ignored: dict[str, str] = field(default_factory=dict)  # relative path -> reason kind
    checks: dict[str, tuple[tuple[int, int], tuple[int, int] | None, tuple[int, int, int] | None]] = field(
        default_factory=dict
    )  # relative path -> (decoded size, a pixel position, its expected RGB)


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb's signature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def _jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def _save(image: Image.Image, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)


def build_fault_corpus(root: Path, per_genre: int = 12, size: tuple[int, int] = (48, 72)) -> Corpus:
    corpus = Corpus(root=root)
    rng = np.random.default_rng(0)
    for genre in GENRES:
        for i in range(per_genre):
            _save(draw_poster(genre, rng, size), root / genre / f"{genre.lower()}_{i:03d}.jpg", quality=90)
            corpus.kept.add(f"{genre}/{genre.lower()}_{i:03d}.jpg")
    action, comedy, horror = root / "Action", root / "Comedy", root / "Horror"
    good = (action / "action_000.jpg").read_bytes()

    def kept(rel: str, size=None, at: tuple[int, int] | None = (0, 0), rgb: tuple[int, int, int] | None = None):
        corpus.kept.add(rel)
        if size is not None:
            corpus.checks[rel] = (size, at, rgb)

    # Broken files: skipped, each with its reason.
    (action / "truncated.jpg").write_bytes(good[: len(good) // 2])
    corpus.skipped["Action/truncated.jpg"] = "corrupt image data"
    (action / "zero.jpg").write_bytes(b"")
    corpus.skipped["Action/zero.jpg"] = "empty file"
    (action / "page.jpg").write_text("<!doctype html><html><body>Access denied</body></html>")
    corpus.skipped["Action/page.jpg"] = "not an image"
    _save(Image.new("RGB", (1, 1), (9, 9, 9)), action / "tiny.png")
    corpus.skipped["Action/tiny.png"] = "too small"
    (action / "bomb.png").write_bytes(_png_declaring(100_000, 100_000))
    corpus.skipped["Action/bomb.png"] = "decompression bomb"
    # A mode PIL decodes but cannot convert to RGB: 16-bit big-endian greyscale (a TIFF named .png).
    big_endian = io.BytesIO()
    Image.fromarray(np.full((60, 40), 3000, dtype=">u2")).save(big_endian, format="TIFF")
    (action / "big_endian.png").write_bytes(big_endian.getvalue())
    corpus.skipped["Action/big_endian.png"] = "unsupported image mode"
    os.symlink("selfloop.jpg", action / "selfloop.jpg")  # a symlink that points at itself
    corpus.skipped["Action/selfloop.jpg"] = "cannot read file"
    os.mkfifo(action / "pipe.jpg")  # reading it would block forever
    corpus.skipped["Action/pipe.jpg"] = "not a regular file"
    if os.geteuid() != 0:  # root reads mode-000 files anyway
        unreadable = action / "unreadable.jpg"
        unreadable.write_bytes(good)
        unreadable.chmod(0)
        corpus.skipped["Action/unreadable.jpg"] = "cannot read file"

    # Unusual but valid images: kept, and decoded to the right RGB picture.
    rgba = Image.new("RGBA", (40, 60), (255, 0, 0, 0))  # transparent corner -> white
    rgba.paste((0, 0, 255, 255), (20, 0, 40, 60))
    _save(rgba, comedy / "alpha.png")
    kept("Comedy/alpha.png", (40, 60), (0, 0), (255, 255, 255))
    palette = Image.new("P", (40, 60), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, 20, 60))  # green left half, transparent right half -> white
    _save(palette, comedy / "palette.png", transparency=0)
    kept("Comedy/palette.png", (40, 60), (39, 0), (255, 255, 255))
    sixteen = np.full((60, 40), 65535, dtype=np.uint16)
    sixteen[:30] = 100 * 256
    _save(Image.fromarray(sixteen), comedy / "sixteen_bit.png")
    kept("Comedy/sixteen_bit.png", (40, 60), (0, 0), (100, 100, 100))
    _save(Image.new("L", (40, 60), 77), comedy / "grey.jpg")
    kept("Comedy/grey.jpg", (40, 60), (0, 0), (77, 77, 77))
    _save(Image.new("CMYK", (40, 60), (0, 255, 255, 0)), comedy / "cmyk.jpg")
    kept("Comedy/cmyk.jpg", (40, 60), (0, 0), (255, 0, 0))
    rotated = Image.new("RGB", (60, 40), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 60x40, shown 40x60
    _save(rotated, comedy / "exif_rotated.jpg", exif=exif.tobytes())
    kept("Comedy/exif_rotated.jpg", (40, 60))
    # Damaged EXIF, pixels intact: kept. A tag id hit by a bit flip (Make 0x010F -> 0x0122, a
    # SHORT tag now holding text) made PIL's exif_transpose raise struct.error; the orientation
    # tag itself is intact, so the image is still shown upright.
    exif[0x010F] = "Cam"
    damaged = _jpeg_bytes(rotated, exif=exif.tobytes())
    assert damaged.count(b"\x01\x0f\x00\x02") == 1
    (comedy / "exif_damaged_tag.jpg").write_bytes(damaged.replace(b"\x01\x0f\x00\x02", b"\x01\x22\x00\x02"))
    kept("Comedy/exif_damaged_tag.jpg", (40, 60))
    # A damaged EXIF header (TIFF byte order "MM" -> "MG"): the orientation cannot be read at
    # all (PIL raises SyntaxError), so the image is kept as stored, not rotated.
    buffer = io.BytesIO()
    rotated.save(buffer, format="WEBP", exif=exif.tobytes())
    webp = buffer.getvalue()
    assert webp.count(b"MM\x00*") == 1
    (comedy / "exif_bad_header.webp").write_bytes(webp.replace(b"MM\x00*", b"MG\x00*"))
    kept("Comedy/exif_bad_header.webp", (60, 40))
    poster = draw_poster("Horror", rng, (48, 72))
    for name, options in (
        ("UPPER.JPG", {"format": "JPEG"}),
        ("Mixed.Jpeg", {"format": "JPEG"}),
        ("poster.webp", {"format": "WEBP"}),
        ("poster.bmp", {"format": "BMP"}),
    ):
        _save(draw_poster("Horror", rng, (48, 72)), horror / name, **options)
        kept(f"Horror/{name}")
    _save(poster, horror / "nested" / "deeper" / "inner.jpg")
    kept("Horror/nested/deeper/inner.jpg")
    _save(draw_poster("Romance", rng, (48, 72)), root / "Romance" / "with space.jpg")
    kept("Romance/with space.jpg")
    non_utf8 = os.fsencode(root / "Romance") + b"/" + NON_UTF8_NAME
    with open(non_utf8, "wb") as handle:
        draw_poster("Romance", rng, (48, 72)).save(handle, format="JPEG")
    kept("Romance/" + os.fsdecode(NON_UTF8_NAME))

    # Duplicates: the same bytes under two genres, and a resized, re-encoded copy.
    shutil.copy(action / "action_001.jpg", comedy / "also_comedy.jpg")
    kept("Comedy/also_comedy.jpg")
    buffer = io.BytesIO()
    Image.open(action / "action_002.jpg").resize((40, 60)).save(buffer, format="JPEG", quality=70)
    (horror / "action_copy_resized.jpg").write_bytes(buffer.getvalue())
    kept("Horror/action_copy_resized.jpg")

    # Not images, or not ours: ignored and reported.
    (action / "notes.txt").write_text("scraped with a script")
    corpus.ignored["Action/notes.txt"] = "not an image extension"
    (horror / "poster").write_bytes(good)  # no extension at all
    corpus.ignored["Horror/poster"] = "not an image extension"
    os.symlink("..", horror / "loop")  # directory symlink loop
    corpus.ignored["Horror/loop"] = "directory symlink"
    _save(draw_poster("Action", rng, (48, 72)), root / "Drama" / "drama.jpg")
    _save(draw_poster("Comedy", rng, (48, 72)), root / "loose.jpg")  # next to the genre folders
    corpus.ignored["loose.jpg"] = "not inside a genre folder"
    return corpus
