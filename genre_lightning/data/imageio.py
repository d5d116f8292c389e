"""Decode an image file into the RGB picture every other part of the project sees.

One function, used by verification, training and prediction alike, so that an image that
passes the scan is decoded the same way when the model reads it.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

from PIL import Image, ImageOps

# Files larger than this many pixels are refused: a poster is well under 10 MP, and the
# check stops a "decompression bomb" (a tiny file that declares huge dimensions) before
# it allocates gigabytes. PIL warns above its own limit; we make that an error.
MAX_PIXELS = 64_000_000
_WHITE = (255, 255, 255)


class UnreadableImage(Exception):
    """The file is not an image we can decode; the message is the reason shown to the user."""


def decode_rgb(data: bytes) -> Image.Image:
    """Decode image bytes to an RGB image, with EXIF orientation applied and alpha flattened on white."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise UnreadableImage(
                    f"decompression bomb: declares {image.width}x{image.height} pixels (limit {MAX_PIXELS:,})"
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
    return _to_rgb(ImageOps.exif_transpose(image))


def _to_rgb(image: Image.Image) -> Image.Image:
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
        # A named pipe or device called *.jpg would block or never end: only regular files are read.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UnreadableImage("not a regular file: a pipe, socket or device")
        data = Path(path).read_bytes()
    except OSError as err:
        raise UnreadableImage(f"cannot read file: {err.strerror or err}") from err
    if not data:
        raise UnreadableImage("empty file: 0 bytes")
    return data


def read_rgb(path: str | Path) -> Image.Image:
    """Read and decode one image file."""
    return decode_rgb(read_image_bytes(path))
