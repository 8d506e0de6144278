"""The one table of image formats: a file (its suffix, else its first bytes) -> the format that reads it.

Every command reads images through here: folder scans and `--queries` lines (`image_suffixes`, `format_of`), the
validation check, the metadata header pass, slices of volumes, and the pixels of training, export and the
torch-free `embed` / `retrieve` (`read_gray`). A new format is one module that calls `register_format` once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# (path, window policy, slice index or None, draft size or None) -> uint8 [H, W], the window applied once (window.py)
Reader = Callable[[Path, str, "int | None", "int | None"], "np.ndarray"]
FALLBACK = "plain"  # a file no format claims goes to Pillow, which knows many more kinds (a table may name any file)


class ImageError(ValueError):
    """A file that cannot become a model input; str() is the reason a skip or a one-line refusal names."""


# the most pixels one image may have (a 10k x 10k scan): a larger one is refused by its header, before a byte of
# pixel data is decoded (not Pillow's DecompressionBombWarning after it has allocated the memory)
MAX_PIXELS = 100_000_000


def check_regular(path: str | Path) -> None:
    """Only regular files are opened as images: a named pipe called x.png would block its reader for ever."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the reader says so
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a device or socket"
        raise ImageError(f"not a regular file ({kind})")


def check_pixels(width: int, height: int) -> None:
    """Every format's header check calls this with the image's size."""
    if width * height > MAX_PIXELS:
        raise ImageError(f"{width} x {height} pixels ({width * height / 1e6:.0f} MP) is over the "
                         f"{MAX_PIXELS / 1e6:.0f} MP limit for one image")


@dataclass(frozen=True)
class Format:
    """One kind of image file. Only `name`, `suffixes` and `read` are required.

    read: (path, window, slice, draft) -> uint8 [H, W]; `slice` is None except for volumes (None there: the middle
        slice); `draft`: the reader may decode at a reduced scale that still covers this many pixels.
    check: header only -> the shorter side in pixels, or raises (ImageError: the reason) for validation.
    magic: the file's content says it is this format (for names whose suffix says nothing: DICOM's IM000001).
    header: (allow-listed columns, check) from one read, for the metadata pass; columns: the names it can give.
    volume: path -> (slices along the axial axis, shorter side of a slice): each slice becomes an item.
    raw: path -> (WebDataset extension, the file's bytes) when shards may keep it as it is, else None.
    """

    name: str
    suffixes: tuple[str, ...]
    read: Reader
    check: Callable[[Path], int] | None = None
    magic: Callable[[Path], bool] | None = None
    header: Callable[[Path], tuple[dict[str, str], int | str]] | None = None
    columns: tuple[str, ...] = ()
    volume: Callable[[Path], tuple[int, int]] | None = None
    raw: Callable[[Path], tuple[str, bytes] | None] | None = None


_FORMATS: dict[str, Format] = {}
_SUFFIXES: tuple[str, ...] = ()  # every registered suffix, longest first (recomputed when the table changes)


def _changed() -> None:
    global _SUFFIXES
    _SUFFIXES = tuple(sorted({s for f in _FORMATS.values() for s in f.suffixes}, key=lambda s: (-len(s), s)))


def register_format(fmt: Format) -> Format:
    """Add `fmt` to the table (a name registered again is replaced); suffixes are matched without case."""
    fmt = replace(fmt, suffixes=tuple(s.lower() for s in fmt.suffixes))
    _FORMATS[fmt.name] = fmt
    _changed()
    return fmt


def unregister_format(name: str) -> None:
    _FORMATS.pop(name, None)
    _changed()


def formats() -> list[Format]:
    """The registered formats, in registration order."""
    return list(_FORMATS.values())


def image_suffixes() -> tuple[str, ...]:
    """Every suffix a format claims ('.png', '.dcm', '.nii.gz', ...), longest first."""
    return _SUFFIXES


def matched_suffix(name: str | Path) -> str | None:
    """The registered suffix a file name ends with, the longest ('.nii.gz', not '.gz'), in lower case; or None."""
    low = str(name).lower()
    return next(s for s in _SUFFIXES if low.endswith(s)) if low.endswith(_SUFFIXES) else None


def suffix_format(path: str | Path) -> Format | None:
    """The format a file's name says (no reading)."""
    suffix = matched_suffix(Path(path).name)
    return next((f for f in _FORMATS.values() if suffix in f.suffixes), None) if suffix else None


def format_of(path: str | Path) -> Format | None:
    """The format of a file: by its name, else by its content (each format's magic test); None when none claims it."""
    fmt = suffix_format(path)
    if fmt is not None or not Path(path).is_file():  # a named pipe's first bytes would never come
        return fmt
    return next((f for f in _FORMATS.values() if f.magic is not None and f.magic(Path(path))), None)


def reading(path: str | Path) -> Format:
    """The format that reads `path`: its own, else Pillow's."""
    return format_of(path) or _FORMATS[FALLBACK]


def read_gray(path: str | Path, window: str = "auto", slice: int | None = None,
              draft: int | None = None) -> np.ndarray:
    """Any image file -> uint8 [H, W] at full resolution under window policy `window`; `slice` of a volume (None:
    its middle one). Raises OSError / ValueError (ImageError names the reason)."""
    check_regular(path)
    fmt = reading(path)
    if slice is not None and fmt.volume is None:
        raise ImageError(f"{fmt.name} files hold one image: there is no slice {slice}")
    return fmt.read(Path(path), window, slice, draft)


def check_image(path: str | Path) -> int:
    """Header-only check: the shorter side in pixels; raises with the reason (ImageError) or any other error."""
    check_regular(path)
    fmt = reading(path)
    if fmt.check is None:  # a format without a cheap check: decode it once
        return min(fmt.read(Path(path), "minmax", None, None).shape)
    return fmt.check(Path(path))


def format_header(path: str | Path) -> tuple[dict[str, str], int | str] | None:
    """(allow-listed columns, check) of a file whose format reads metadata, from one read; None for other files.
    A header that does not parse gives blank columns (so every row of that format has them) and its reason."""
    fmt = format_of(path)
    if fmt is None or fmt.header is None:
        return None
    try:
        check_regular(path)
    except ImageError as e:
        return dict.fromkeys(fmt.columns, ""), str(e)
    cols, check = fmt.header(Path(path))
    return cols or dict.fromkeys(fmt.columns, ""), check


def may_have_header(path: str | Path) -> bool:
    """Whether the metadata pass must look at a file: its suffix names a format with a header, or names none
    (then its content decides, in the pass's worker processes)."""
    fmt = suffix_format(path)
    return fmt.header is not None if fmt is not None else any(f.header and f.magic for f in _FORMATS.values())


def volume_info(path: str | Path) -> tuple[int, int] | None:
    """(slices, shorter side of a slice) of a volume file (by its name); None for other files. Raises ImageError for
    a volume that cannot be read (the reason)."""
    fmt = suffix_format(path)
    if fmt is None or fmt.volume is None:
        return None
    check_regular(path)
    return fmt.volume(Path(path))
