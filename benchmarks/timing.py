"""A pretrain reporter that stamps each step, shared by the benchmarks that time `convirt pretrain`'s own loop."""

from __future__ import annotations

import time
from collections.abc import Callable


def make_timer(sync: Callable[[], None] | None = None):
    """Stamps each progress update of the loop (after `sync`, e.g. torch.cuda.synchronize, so GPU work is counted),
    so steady-state throughput can leave start-up out. On CPU the loop updates every step (stamps[i]: after step
    i + 1); on a GPU every LOG_EVERY steps (train/loop.py): `per_s` takes the updates after a warm-up."""
    from convirt_cli.torchfree.report import NullReporter

    class Timer(NullReporter):
        def __init__(self):
            self.stamps: list[float] = []
            self.steps: list[int] = []

        def update(self, done, status):
            if sync is not None:
                sync()
            self.stamps.append(time.perf_counter())
            self.steps.append(done)

        def per_s(self, samples_per_step: int, warmup: int) -> tuple[float, int]:
            """(samples/s, steps timed) from the first update at or after step `warmup` to the last."""
            first = next(i for i, n in enumerate(self.steps) if n >= warmup)
            steps = self.steps[-1] - self.steps[first]
            return steps * samples_per_step / (self.stamps[-1] - self.stamps[first]), steps

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
