"""The decode side of encoding images: sources -> the model's input batches, float32 [B, C, S, S], normalised.

`workers` decode in parallel, each image straight into its row of a batch (imageio.load_gray, then the
normalisation through one 256-entry table per channel), so the thread that runs the model does nothing else:
- worker processes, when there is more than one worker and enough images to pay for starting them
  (PROCESS_MIN_IMAGES): they write into shared memory, and the batch handed to the model is that memory (no
  copy, no pickling of pixels);
- threads otherwise (a few queries, one core, or no room in /dev/shm), into ordinary arrays.
Processes, because the GIL binds: Pillow releases it while it decodes and resizes, but opening the file, the
format lookup, EXIF and pydicom's parsing hold it, 35-60% of an image's time on covid-cxr's files (measured:
benchmarks/decode_bench.py), so threads stop adding up after two or three cores; processes do not.

Batches come back in input order, SLOTS of them in flight (one with the model, the others decoding). An image
that fails to decode leaves its batch and is named, as `encode_images` always did. Workers ignore Ctrl-C; the
pool and the shared memory are released when the `with` block ends, however it ends.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Self

import numpy as np

if TYPE_CHECKING:
    from convirt_cli.torchfree.imageio import ImageSource

SLOTS = 3  # batches in flight: one with the model, two being decoded
PROCESS_MIN_IMAGES = 256  # fewer images decode in threads: starting processes costs ~0.3 s (decode_bench)
SHM_PREFIX = "convirt-"  # shared memory names start so (tests look for leftovers)
_ATTACHED: dict[str, tuple[object, np.ndarray]] = {}  # in a worker process: the pool's shared batches
_UNCLOSED: list = []  # shared memory still mapped by a batch someone holds: closed once it is let go


def pixel_tables(mean: Sequence[float], std: Sequence[float], channels: int) -> np.ndarray:
    """float32 [C, 256]: table[c, v] is grey level v normalised for channel c, exactly as imageio.normalize_array
    computes it (the same float32 operations, so the same bits)."""
    from convirt_cli.torchfree.imageio import normalize_array

    levels = np.arange(256, dtype=np.uint8).reshape(1, 1, 256)
    return np.ascontiguousarray(normalize_array(levels, list(mean), list(std), channels)[0, :, 0, :])


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def decode_rows(out: np.ndarray, sources: Sequence[ImageSource], size: int, window: str,
                tables: np.ndarray) -> list[tuple[int, str]]:
    """Decode sources[i] into out[i] (float32 [C, S, S]); -> [(i, reason)] of those that did not decode."""
    from convirt_cli.torchfree.imageio import load_gray

    bad = []
    for i, src in enumerate(sources):
        path, k = src if isinstance(src, tuple) else (src, None)
        try:
            gray = load_gray(path, size, window, k)
        except Exception as e:  # noqa: BLE001 - any decode failure is a skip, named in the summary
            bad.append((i, _reason(e)))
            continue
        for c in range(len(tables)):
            np.take(tables[c], gray, out=out[i, c], mode="clip")  # levels are 0..255: clip never acts
    return bad


def _attached(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """In a worker process: the pool's shared batches (attached on the first task; a worker serves one pool)."""
    if name not in _ATTACHED:
        from multiprocessing import shared_memory

        # workers share the parent's resource tracker (forkserver and spawn pass it on): registering the name
        # again is harmless, and the parent unlinks it once
        shm = shared_memory.SharedMemory(name=name)
        _ATTACHED.clear()
        _ATTACHED[name] = (shm, np.ndarray(shape, np.float32, shm.buf))
    return _ATTACHED[name][1]


def _decode_into_shared(name: str, shape: tuple[int, ...], slot: int, start: int, sources: list, size: int,
                        window: str, tables: np.ndarray) -> list[tuple[int, str]]:
    batches = _attached(name, shape)
    return decode_rows(batches[slot, start:start + len(sources)], sources, size, window, tables)


def use_processes(workers: int, images: int) -> bool:
    return workers > 1 and images >= PROCESS_MIN_IMAGES


def _shm_room(nbytes: int) -> bool:
    """Whether /dev/shm can hold nbytes twice over (a full tmpfs kills a process writing to it with SIGBUS)."""
    if not os.path.isdir("/dev/shm"):
        return True  # macOS and others: shm_open has no folder to ask; a failure falls back to threads
    return shutil.disk_usage("/dev/shm").free >= 2 * nbytes


class PixelBatches:
    """`with PixelBatches(sources, pre, batch_size, workers) as batches: for start, x, ok, bad in batches: ...`

    x: float32 [len(ok), C, S, S], the model's input for sources[start:start + batch_size] (ok: positions within
    the batch that decoded; bad: [(position, reason)]). x is valid until the loop asks for the next batch.
    processes: True / False force worker processes / threads (benchmarks, tests); None: use_processes decides."""

    def __init__(self, sources: Sequence[ImageSource], pre: dict, batch_size: int, workers: int,
                 processes: bool | None = None):
        self.sources, self.batch = list(sources), batch_size
        self.size, self.window = int(pre["image_size"]), pre.get("window", "auto")
        self.tables = pixel_tables(pre["mean"], pre["std"], int(pre["channels"]))
        slots = min(SLOTS, max(1, math.ceil(len(self.sources) / batch_size)))
        self.shape = (slots, batch_size, len(self.tables), self.size, self.size)
        self.workers = max(1, workers)
        self.step = max(1, math.ceil(batch_size / self.workers))  # images per task: one task per worker per batch
        wanted = use_processes(self.workers, len(self.sources)) if processes is None else processes
        self.processes = wanted and _shm_room(4 * math.prod(self.shape))
        self._shm = self._pool = None

    def __enter__(self) -> Self:
        if self.processes:
            self._open_processes()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.processes = False
            self.buffer = np.empty(self.shape, np.float32)
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="convirt-decode")
        return self

    def _open_processes(self) -> None:
        from multiprocessing import shared_memory

        from convirt_cli.torchfree.processes import process_pool

        try:
            self._shm = shared_memory.SharedMemory(name=f"{SHM_PREFIX}{os.getpid()}-{os.urandom(4).hex()}",
                                                   create=True, size=4 * math.prod(self.shape))
        except OSError:  # no shared memory here: threads
            return
        self.buffer = np.ndarray(self.shape, np.float32, self._shm.buf)
        self._pool = process_pool(self.workers)

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # a running task is a few images
            self._pool = None
        if self._shm is not None:
            self._shm.unlink()  # the name goes now; the memory when the last mapping closes
            del self.buffer
            if not _UNCLOSED:
                import atexit

                atexit.register(_close_unheld)
            _UNCLOSED.append(self._shm)
            self._shm = None
        _close_unheld()

    def _submit(self, start: int, slot: int):
        chunk = self.sources[start:start + self.batch]
        futures = []
        for off in range(0, len(chunk), self.step):
            part = chunk[off:off + self.step]
            if self.processes:
                f = self._pool.submit(_decode_into_shared, self._shm.name, self.shape, slot, off, part, self.size,
                                      self.window, self.tables)
            else:
                f = self._pool.submit(decode_rows, self.buffer[slot, off:off + len(part)], part, self.size,
                                      self.window, self.tables)
            futures.append((off, f))
        return start, len(chunk), slot, futures

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, list[int], list[tuple[int, str]]]]:
        starts = deque(range(0, len(self.sources), self.batch))
        pending = deque(self._submit(starts.popleft(), slot) for slot in range(self.shape[0]) if starts)
        while pending:
            start, n, slot, futures = pending.popleft()
            bad = [(off + i, r) for off, f in futures for i, r in f.result()]
            failed = {i for i, _ in bad}
            ok = [i for i in range(n) if i not in failed]
            yield start, (self.buffer[slot, :n] if not bad else self.buffer[slot, ok]), ok, bad
            if starts:  # the model is done with this slot: decode the next batch into it
                pending.append(self._submit(starts.popleft(), slot))


def _close_unheld() -> None:
    """Close the shared memory no batch refers to any more. A batch still held (the last one, in the frame of an
    exception on its way up) keeps its mapping until a later call, or the process's end, finds it let go."""
    for shm in list(_UNCLOSED):
        try:
            shm.close()
        except BufferError:
            continue
        _UNCLOSED.remove(shm)
