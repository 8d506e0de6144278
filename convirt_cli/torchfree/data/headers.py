"""The metadata header pass: each row's header read once, for its allow-listed metadata columns and its validation
check together (formats whose table entry has a `header`: DICOM), in worker processes when there are many (a
MIMIC-CXR folder holds 377k files: ~0.3-0.9 ms a header, minutes in one process), behind a progress bar."""

from __future__ import annotations

from contextlib import nullcontext

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.formats import format_header, may_have_header
from convirt_cli.torchfree.processes import ordered_map
from convirt_cli.torchfree.progress import ProgressBar

PARALLEL_FROM = 2000  # headers; below that a pool's start-up (~0.5 s) costs more than it saves


def read_headers(rows: list[Row], workers: int = 1, progress: ProgressBar | None = None) -> None:
    """Set `image_check` of each row not yet checked whose format reads metadata, and its metadata columns where the
    row has none of that name. `workers` > 1: worker processes (convirt_cli.torchfree.processes: a script calling
    this needs the `__main__` guard)."""
    todo = [r for r in rows if r.image_check is None and may_have_header(r.image)]
    if not todo:
        return
    bar = progress("image headers", len(todo), "files") if progress else nullcontext(None)
    with bar as advance:
        results = ordered_map(format_header, [r.image for r in todo], workers if len(todo) >= PARALLEL_FROM else 1,
                              advance=advance)
    for row, result in zip(todo, results):
        if result is None:  # no format with metadata claims it: validation reads it as other images
            continue
        cols, check = result
        row.image_check = check
        row.columns = row.columns | {k: v for k, v in cols.items() if k not in row.columns}  # a table's win
