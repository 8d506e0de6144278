"""A pretrain reporter that stamps each step, shared by the benchmarks that time `convirt pretrain`'s own loop."""

from __future__ import annotations

import time
from collections.abc import Callable


def make_timer(sync: Callable[[], None] | None = None):
    """Stamps each optimisation step (after `sync`, e.g. torch.cuda.synchronize, so GPU work is counted), so
    steady-state throughput can leave start-up out."""
    from convirt_cli.torch.train.loop import NullReporter

    class Timer(NullReporter):
        def __init__(self):
            self.stamps: list[float] = []

        def step(self, step, metrics):
            if sync is not None:
                sync()
            self.stamps.append(time.perf_counter())

    return Timer()


def rate(fn: Callable[[], object], n: int, rounds: int = 3) -> float:
    """n items / the best of `rounds` timed calls of fn, after one untimed (warm-up) call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best
