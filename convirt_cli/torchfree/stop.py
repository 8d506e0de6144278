"""Stop training cleanly on Ctrl-C (SIGINT) or a scheduler's SIGTERM.

The first signal only sets a flag; the loop finishes the step it is in, saves a checkpoint and exits with
128 + the signal number. A second Ctrl-C aborts at once (every file is written atomically, so nothing is
left half-written). DataLoader workers and `convirt shard`'s encoding processes ignore both signals: the main
process decides when they stop. Torch-free, so the shard workers start without torch.
"""

from __future__ import annotations

import signal
import threading
from typing import Self

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now, without the checkpoint
        self.signum = signum

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for s in SIGNALS:
                self._old[s] = signal.getsignal(s)
                signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


def ignore_signals(worker_id: int = 0) -> None:
    """A worker's initializer (DataLoader's worker_init_fn, a process pool's): Ctrl-C reaches the whole process
    group; only the main process acts on it."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
