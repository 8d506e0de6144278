"""Check rows before training: count usable pairs and the skipped ones, by reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.errors import ConvirtError


@dataclass
class Validation:
    found: int
    usable: list[Row]
    skipped: list[tuple[Row, str]] = field(default_factory=list)

    def reasons(self) -> Counter:
        return Counter(reason for _, reason in self.skipped)


def check_row(row: Row, need_text: bool) -> str | None:
    """The reason a row cannot be used, or None."""
    if not row.image.is_file():
        return "missing image file"
    if need_text and not row.text.strip():
        return "empty text"
    try:
        with Image.open(row.image) as im:  # reads the header only: cheap, catches non-images
            im.size  # noqa: B018
    except Exception:  # noqa: BLE001 - any decoder failure means: not a usable image
        return "unreadable image"
    return None


def validate_rows(rows: list[Row], need_text: bool = True, strict: bool = False) -> Validation:
    v = Validation(found=len(rows), usable=[])
    for row in rows:
        reason = check_row(row, need_text)
        if reason is None:
            v.usable.append(row)
        else:
            v.skipped.append((row, reason))
    if strict and v.skipped:
        row, reason = v.skipped[0]
        raise ConvirtError(f"{row.source}: {reason} ({row.image.name}); {len(v.skipped)} bad rows in all "
                           "(drop --strict to skip them)")
    if not v.usable:
        raise ConvirtError(f"no usable rows out of {v.found}: {dict(v.reasons())}")
    return v
