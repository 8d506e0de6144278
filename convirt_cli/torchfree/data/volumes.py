"""Rows naming a volume (NIfTI) -> one row per 2-D slice the `--slices` policy picks (formats/slices.py).

Each slice row keeps its volume's path, text and columns and carries its slice index (`Row.slice`); its source
names the slice ("pairs.csv:4 slice 12"). The split keys on the image path, so a volume's slices stay in one split.
Only the header is read here; a volume that cannot be read stays one row whose check is the reason (a counted skip).
"""

from __future__ import annotations

from dataclasses import replace

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.formats import ImageError, suffix_format, volume_info
from convirt_cli.torchfree.formats.slices import pick_slices


def volume_slices(path, policy: str) -> list[int | None]:
    """The slices of `path` that `policy` picks ([None]: a 2-D image, or a volume that cannot be read: reading it
    later names the reason)."""
    try:
        info = volume_info(path)
    except (ImageError, OSError):
        return [None]
    return [None] if info is None else list(pick_slices(policy, info[0])) or [None]


def expand_volumes(rows: list[Row], policy: str) -> list[Row]:
    """Rows with every volume row replaced by its slice rows (in slice order); other rows as they are."""
    out = []
    for row in rows:
        fmt = suffix_format(row.image)  # by name: no file of a 377k-row table is touched unless it is a volume
        if fmt is None or fmt.volume is None or not row.image.is_file():
            out.append(row)
            continue
        try:
            n, side = fmt.volume(row.image)
        except ImageError as e:
            out.append(replace(row, image_check=str(e)))
            continue
        out += [replace(row, slice=k, source=f"{row.source} slice {k}", columns=dict(row.columns), image_check=side)
                for k in pick_slices(policy, n)]
    return out
