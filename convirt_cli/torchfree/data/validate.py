"""Check rows before training: count usable pairs and the skipped ones, by reason."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.data.where import excluded, parse_where
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.formats import ImageError, check_image, check_regular
from convirt_cli.torchfree.progress import ProgressBar


@dataclass
class Validation:
    found: int
    usable: list[Row]
    skipped: list[tuple[Row, str]] = field(default_factory=list)
    min_side: int | None = None  # the smallest usable image's shorter side, in pixels

    def reasons(self) -> Counter:
        return Counter(reason_kind(reason) for _, reason in self.skipped)


def reason_kind(reason: str) -> str:
    """A skip reason without the row it points at ('duplicate pair (of t.csv:2)' -> 'duplicate pair'): counted
    together, so a table with thousands of duplicates gives one count, not a reason each."""
    return reason.split(" (of ", 1)[0]


def check_row(row: Row, need_text: bool) -> str | int:
    """The reason a row cannot be used, or its image's shorter side (pixels)."""
    if not row.image.is_file():
        try:
            check_regular(row.image)
        except ImageError as e:
            return str(e)
        return "missing image file"
    if need_text and row.text_problem:
        return row.text_problem
    if need_text and not row.text.strip():
        return "empty text"
    if row.image_check is not None:  # read with the metadata (headers.py) or the volume's header (volumes.py)
        return row.image_check
    try:
        return check_image(row.image)  # the header only, by the file's format: cheap, catches non-images
    except ImageError as e:
        return str(e)
    except ConvirtError:  # a reader missing (pip install ...): one line, not a skip per file
        raise
    except Exception:  # noqa: BLE001 - any decoder failure means: not a usable image
        return "unreadable image"


BAR_FROM = 5000  # rows; fewer are checked in a second or two
SLOW_STORAGE_S = 1e-3  # per header read; a local disk or page cache takes ~0.04 ms (pneumoniamnist, 2026-11-26)


def check_rows(rows: list[Row], need_text: bool, threads: int = 16, probe: int = 256,
               advance: Callable[[int], None] = lambda n: None) -> list[str | int]:
    """check_row of every row, in order. The first `probe` rows are timed: where a header read waits on storage
    (archives on network file systems: milliseconds each) the rest go through a thread pool that overlaps the
    waits; on a local disk threads only add GIL contention (0.19 vs 0.04 ms a row measured here), so they stay off.
    `advance(n)` after each `probe` rows, for a progress bar."""
    t0 = time.perf_counter()
    out = [check_row(r, need_text) for r in rows[:probe]]
    advance(len(out))
    rest = rows[probe:]
    slow = (time.perf_counter() - t0) / max(1, len(out)) >= SLOW_STORAGE_S
    pool = ThreadPoolExecutor(threads) if rest and threads > 1 and slow else None
    try:
        for start in range(0, len(rest), probe):
            chunk = rest[start:start + probe]
            out += (list(pool.map(lambda r: check_row(r, need_text), chunk)) if pool
                    else [check_row(r, need_text) for r in chunk])
            advance(len(chunk))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return out


KIND_COLUMNS = ("modality", "view", "body_part", "presentation")  # the DICOM columns that say what an image is


def image_kinds(rows: list[Row]) -> str:
    """'modality DX 480, CT 2400; view PA 300, LL 50' over the rows' kind columns ('' when they have none): an
    archive export holding CT slices or lateral views shows it before training, so that --where can leave them out."""
    parts = []
    for col in KIND_COLUMNS:
        counts = Counter(r.columns[col].strip() or "blank" for r in rows if col in r.columns)
        if counts and set(counts) != {"blank"}:
            shown = ", ".join(f"{value} {n}" for value, n in counts.most_common(6))
            parts.append(f"{col} {shown}{' ...' if len(counts) > 6 else ''}")
    return "; ".join(parts)


def select_rows(rows: list[Row], where: list[str] | tuple[str, ...]) -> tuple[list[Row], list[tuple[Row, str]]]:
    """(rows --where keeps, [(row, why it was left out)]); a column no row has is an error."""
    conditions = parse_where(where)
    for col in conditions:
        if rows and not any(col in r.columns for r in rows):
            raise ConvirtError(f"{rows[0].source}: no column '{col}' for --where (columns: "
                               f"{', '.join(rows[0].columns)})")
    kept, left = [], []
    for row in rows:
        reason = excluded(row.columns, conditions) if conditions else None
        if reason is None:
            kept.append(row)
        else:
            left.append((row, reason))
    return kept, left


def validate_rows(rows: list[Row], need_text: bool = True, strict: bool = False,
                  where: list[str] | tuple[str, ...] = (), progress: ProgressBar | None = None) -> Validation:
    """Usable rows, and the others counted by reason: left out by --where (not an error, even with --strict),
    or unusable (missing or unreadable image, empty text...)."""
    v = Validation(found=len(rows), usable=[])
    rows, v.skipped = select_rows(rows, where)
    left_out = len(v.skipped)
    big = sum(r.image_check is None for r in rows) >= BAR_FROM  # DICOMs were checked with their headers (read_rows)
    bar = progress("checking images", len(rows), "rows") if progress and big else nullcontext(None)
    with bar as advance:
        reasons = check_rows(rows, need_text, advance=advance or (lambda n: None))
    for row, reason in zip(rows, reasons):
        if isinstance(reason, int):
            v.usable.append(row)
            v.min_side = reason if v.min_side is None else min(v.min_side, reason)
        else:
            v.skipped.append((row, reason))
    if strict and len(v.skipped) > left_out:
        row, reason = v.skipped[left_out]
        raise ConvirtError(f"{row.source}: {reason} ({row.image.name}); {len(v.skipped) - left_out} bad rows in all "
                           "(drop --strict to skip them)")
    if not v.usable:
        hint = ""
        if v.reasons().get("missing image file") == v.found and rows:
            hint = (f"; e.g. {rows[0].source} names {rows[0].image}: image paths are read relative to the table's "
                    "folder (or a parent of it), or give them absolute")
        raise ConvirtError(f"no usable rows out of {v.found}: {dict(v.reasons())}{hint}")
    return v
