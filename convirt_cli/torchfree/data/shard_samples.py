"""One table row -> one WebDataset sample for `convirt shard` (shard_writer.write_shards): the
image decoded in full (a file that would fail in training fails here and is counted), downscaled or windowed to
an 8-bit PNG when asked (and always for DICOM, 16-bit images and slices of volumes), else its own bytes.
Torch-free, so the worker processes that do this start fast."""

from __future__ import annotations

import io
import json
from collections import deque
from collections.abc import Iterator
from itertools import islice

from PIL import Image

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.formats import ImageError, reading
from convirt_cli.torchfree.imageio import open_gray
from convirt_cli.torchfree.processes import process_pool


def sample(row: Row, key: int, max_side: int | None, window: str) -> dict:
    """One row -> a WebDataset sample; raises for an image that does not decode (counted by the caller)."""
    im = open_gray(row.image, window, slice=row.slice)  # decodes fully: a file that would fail in training fails here
    too_big = bool(max_side) and max(im.size) > max_side
    fmt = reading(row.image)
    # the file's own bytes where shards decode them as they are (8-bit PNG, JPEG...); else the window would be skipped
    raw = fmt.raw(row.image) if fmt.raw and row.slice is None and not too_big and window == "auto" else None
    if raw:
        ext, data = raw
    else:
        if too_big:
            im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        ext, data = "png", buf.getvalue()
    about = {"source": row.source, "columns": row.columns} | ({"slice": row.slice} if row.slice is not None else {})
    return {"__key__": f"{key:09d}", ext: data, "txt": row.text.encode("utf-8"), "json": json.dumps(about).encode("utf-8")}


def encode(job: tuple[Row, int, int | None, str]) -> tuple[dict | None, str | None]:
    """(sample, None), or (None, why) for an image that does not decode; runs in the worker processes."""
    try:
        return sample(*job), None
    except Exception as e:  # noqa: BLE001 - any decode failure is a counted skip, as in pretrain
        return None, str(e) if isinstance(e, ImageError) else "unreadable image"


def encoded(jobs: list, workers: int) -> Iterator[tuple[dict | None, str | None]]:
    """encode over jobs, in their order: decoding and PNG encoding are most of the work, so they run in worker
    processes (convirt_cli.torchfree.processes), a few jobs ahead of the writer. On Ctrl-C the workers finish the
    image in hand and stop; close the generator (contextlib.closing) so that happens at once."""
    if workers <= 1 or len(jobs) < 2:
        yield from map(encode, jobs)
        return
    pool = process_pool(min(workers, len(jobs)))
    try:
        todo = iter(jobs)
        pending = deque(pool.submit(encode, job) for job in islice(todo, 4 * workers))
        while pending:
            result = pending.popleft().result()
            for job in islice(todo, 1):
                pending.append(pool.submit(encode, job))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
