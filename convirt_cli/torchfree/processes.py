"""Worker processes for CPU-bound work over many files: `convirt shard`'s image encoding, the DICOM header pass over
a folder. Python-level parsing holds the GIL, so threads do not add up; processes do.

forkserver where it exists, so the parent's threads (a progress bar's, torch's) are never forked; spawn elsewhere
(Windows). Both import the caller's main module in the workers: a script that calls this needs the
`if __name__ == "__main__":` guard, as the CLI's entry points have. Workers ignore Ctrl-C: the main process decides
when they stop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from convirt_cli.torchfree.stop import ignore_signals

T = TypeVar("T")
R = TypeVar("R")


def cpu_workers() -> int:
    """The CPU cores this process may use, shared among the ranks torchrun starts on this machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def process_pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=ignore_signals)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, chunk: int = 256,
                advance: Callable[[int], None] | None = None) -> list[R]:
    """[fn(x) for x in items], in order, in `workers` processes when more than one (fn must be a module-level
    function); `advance(n)` after each chunk, for a progress bar."""
    items = list(items)
    advance = advance or (lambda n: None)
    if workers <= 1 or len(items) <= chunk:
        out = []
        for start in range(0, len(items), chunk):
            out.extend(map(fn, items[start:start + chunk]))
            advance(len(items[start:start + chunk]))
        return out
    pool = process_pool(min(workers, -(-len(items) // chunk)))
    try:
        out = []
        for i, result in enumerate(pool.map(fn, items, chunksize=chunk), start=1):
            out.append(result)
            if i % chunk == 0 or i == len(items):
                advance(chunk if i % chunk == 0 else i % chunk)
        return out
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
