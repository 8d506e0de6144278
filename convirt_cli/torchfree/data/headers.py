"""The DICOM header pass: each DICOM row's header read once, for its metadata columns and its validation check
together, in worker processes when there are many (a MIMIC-CXR folder holds 377k files: ~0.3-0.9 ms a header,
minutes in one process), behind a progress bar."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.dicom import DICOM_SUFFIXES, header
from convirt_cli.torchfree.processes import ordered_map

# (label, total, unit) -> a context giving advance(n): the CLI's progress_bar
Progress = Callable[[str, int, str], AbstractContextManager[Callable[[int], None]]]
PARALLEL_FROM = 2000  # headers; below that a pool's start-up (~0.5 s) costs more than it saves


def read_headers(rows: list[Row], columns: bool, workers: int = 1, progress: Progress | None = None) -> None:
    """Set `image_check` of each DICOM row not yet checked and, with `columns`, its metadata columns (a folder's
    rows; a table's own columns are kept). `workers` > 1: worker processes (convirt_cli.torchfree.processes: a
    script calling this needs the `__main__` guard)."""
    todo = [r for r in rows if r.image_check is None and r.image.suffix.lower() in DICOM_SUFFIXES]
    if not todo:
        return
    bar = progress("DICOM headers", len(todo), "files") if progress else nullcontext(None)
    with bar as advance:
        results = ordered_map(header, [r.image for r in todo], workers if len(todo) >= PARALLEL_FROM else 1,
                              advance=advance)
    for row, (cols, check) in zip(todo, results):
        row.image_check = check
        if columns:
            row.columns = cols | row.columns  # a study column set while reading stays
