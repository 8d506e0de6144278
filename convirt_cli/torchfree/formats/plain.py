"""Plain image files through Pillow: PNG, JPEG, BMP, TIFF, GIF, WebP, and any other file no format claims.

8-bit images are used as they are (under `auto`); 16-bit PNG and 16-bit / float TIFF keep their depth until the
window policy maps them to 8 bits once, so nothing is clipped by a plain 8-bit conversion.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from convirt_cli.torchfree.formats.table import (
    MAX_PIXELS,
    Format,
    ImageError,
    check_pixels,
    check_regular,
    register_format,
)
from convirt_cli.torchfree.formats.window import lut_friendly, stored_to_uint8, to_uint8

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
ORIENTATION = 0x0112  # the EXIF tag exif_transpose acts on
HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# the WebDataset extension a shard stores a file's own bytes under (shards decode these as they are)
RAW_EXT = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".bmp": "bmp", ".tif": "tif", ".tiff": "tif",
           ".webp": "webp", ".gif": "gif"}


def open_image(path: Path):
    """Image.open of a regular file whose header says at most MAX_PIXELS pixels (nothing decoded yet): a larger one
    is one ImageError, without Pillow's DecompressionBombWarning (89 MP) or Error (179 MP)."""
    import warnings

    from PIL import Image

    check_regular(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as e:  # over twice Pillow's limit: it refuses at open
            n = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(n.group(1)) / 1e6:.0f} MP" if n else "too many pixels"
            raise ImageError(f"{size} is over the {MAX_PIXELS / 1e6:.0f} MP limit for one image") from None
    try:
        check_pixels(*im.size)
    except ImageError:
        im.close()
        raise
    return im


def read(path: Path, window: str, slice: int | None, draft: int | None) -> np.ndarray:
    """The image -> uint8 [H, W] (EXIF orientation applied); `draft`: a JPEG may decode at a reduced scale."""
    from PIL import ImageOps

    with open_image(path) as im:
        if im.mode in HIGH_BIT_MODES:
            values = np.asarray(ImageOps.exif_transpose(im))
            if lut_friendly(values):
                return stored_to_uint8(values, window)
            return to_uint8(values, window)
        if draft:
            im.draft("L", (draft, draft))
        # exif_transpose and convert each copy the image: only when they change it (most files need neither)
        upright = ImageOps.exif_transpose(im) if im.getexif().get(ORIENTATION, 1) != 1 else im
        gray = np.asarray(upright if upright.mode == "L" else upright.convert("L"))
    return gray if window == "auto" else to_uint8(gray, window, eight_bit=True)


def check(path: Path) -> int:
    """The shorter side from the header alone (cheap; catches files that are no image)."""
    try:
        with open_image(path) as im:
            return min(im.size)
    except ImageError:
        raise
    except Exception:  # noqa: BLE001 - any decoder failure means: not a usable image
        raise ImageError("unreadable image") from None


def raw(path: Path) -> tuple[str, bytes] | None:
    """An 8-bit file under a suffix shards decode: its own bytes; 16-bit files are stored windowed instead."""
    ext = RAW_EXT.get(path.suffix.lower())
    if ext is None:
        return None
    with open_image(path) as probe:
        if probe.mode in HIGH_BIT_MODES:
            return None
    return ext, path.read_bytes()


FORMAT = register_format(Format("plain", SUFFIXES, read, check=check, raw=raw))
