"""Decode an image file into the RGB picture every other part of the project sees.

One function, used by verification, training and prediction alike, so that an image that
passes the scan is decoded the same way when the model reads it.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from pathlib import Path

from PIL import ExifTags, Image

log = logging.getLogger(__name__)

# Files larger than this many pixels are refused: a poster is well under 10 MP, and the
# check stops a "decompression bomb" (a tiny file that declares huge dimensions) before
# it allocates gigabytes. PIL warns above its own limit; we make that an error.
MAX_PIXELS = 64_000_000
# Files larger than this are refused before they are read: a scraped "poster" of gigabytes is
# not a poster, and reading it whole into memory (in several threads at once) could exhaust RAM.
MAX_FILE_BYTES = 256 * 1024 * 1024
EMPTY = "empty file: 0 bytes"
# The shorter side below which an image is refused (conf/data/posters.yaml's data.min_image_side):
# prediction uses it for a checkpoint that does not record the setting it was trained with.
DEFAULT_MIN_SIDE = 32
_WHITE = (255, 255, 255)
# EXIF orientation -> the transpose that shows the image upright (as PIL's ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class UnreadableImage(Exception):
    """The file is not an image we can decode; the message is the reason shown to the user."""


def unexpected_error_reason(err: Exception) -> str:
    """The skip reason for an error no known decode failure explains (a bug in a decoder plugin, ...)."""
    return f"unexpected decode error: {type(err).__name__}: {err}"


def too_small(width: int, height: int, min_side: int | None) -> str | None:
    """The reason an upright ``width x height`` picture is refused for its size, or None: the one rule
    the intake (``scan.as_outcome``) and every prediction path (``decode_rgb(min_side=...)``) apply."""
    if min_side is not None and min(width, height) < min_side:
        return f"too small: {width}x{height} px (data.min_image_side={min_side})"
    return None


def check_size(image: Image.Image, min_side: int | None) -> Image.Image:
    """``image``, or UnreadableImage if its shorter side is below ``min_side`` (None: any size)."""
    reason = too_small(image.width, image.height, min_side)
    if reason is not None:
        raise UnreadableImage(reason)
    return image


def decode_rgb(
    data: bytes, name: str = "image", max_side: int | None = None, min_side: int | None = None
) -> Image.Image:
    """Decode image bytes to an RGB image, with EXIF orientation applied and alpha flattened on white.

    ``name`` (the file's path) only labels the log line of an unreadable EXIF orientation;
    ``max_side`` (genre-serve) refuses an image whose longer side is larger, before it is decoded;
    ``min_side`` refuses an upright picture whose shorter side is smaller, as the intake does."""
    if not data:
        raise UnreadableImage(EMPTY)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise UnreadableImage(
                    f"decompression bomb: declares {image.width}x{image.height} pixels (limit {MAX_PIXELS:,})"
                )
            if max_side is not None and max(image.size) > max_side:
                raise UnreadableImage(
                    f"image too large: {image.width}x{image.height} pixels (the longer side may be {max_side:,})"
                )
            image.load()
        except UnreadableImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise UnreadableImage(f"decompression bomb: {err}") from err
        except Image.UnidentifiedImageError as err:
            raise UnreadableImage("not an image: PIL cannot identify the format") from err
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise UnreadableImage(f"corrupt image data: {err}") from err
    upright = check_size(_upright(image, name), min_side)
    try:
        return to_rgb(upright)
    except (ValueError, OSError) as err:  # a mode PIL decodes but cannot convert (16-bit big-endian, ...)
        raise UnreadableImage(f"unsupported image mode: {upright.mode} ({err})") from err


def _upright(image: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation. Only the orientation tag is read: PIL's exif_transpose also
    rewrites the whole EXIF block and crashes (struct.error, ...) on a damaged unrelated tag.
    If even the orientation cannot be read, the pixels are fine: keep the image as stored."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as err:  # any EXIF parser failure; the picture itself decoded
        reason = f"{type(err).__name__}: {err}"
        log.warning("%s: EXIF orientation unreadable (%s); using the image as stored", name, reason)
        return image
    method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: transparency flattened on white, 16-bit scaled, CMYK and greyscale converted."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGBa"):
        background = Image.new("RGB", image.size, _WHITE)
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit and 32-bit integer greyscale: scale to 8 bits instead of clipping at 255.
        image = image.point(lambda value: value / 256).convert("L")
    return image.convert("RGB")


def read_image_bytes(path: str | Path) -> bytes:
    """Read a file's bytes (read-only; the file is never modified)."""
    try:
        info = os.stat(path)
        # A named pipe or device called *.jpg would block or never end: only regular files are read.
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableImage("not a regular file: a pipe, socket or device")
        if info.st_size > MAX_FILE_BYTES:
            raise UnreadableImage(
                f"file too large: {info.st_size / 2**20:.0f} MiB > {MAX_FILE_BYTES // 2**20} MiB limit"
            )
        data = Path(path).read_bytes()
    except OSError as err:
        raise UnreadableImage(f"cannot read file: {err.strerror or err}") from err
    if not data:
        raise UnreadableImage(EMPTY)
    return data


def read_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Read and decode one image file (refused if its shorter side is below ``min_side``)."""
    return decode_rgb(read_image_bytes(path), str(path), min_side=min_side)
