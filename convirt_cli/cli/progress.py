"""A rich progress bar on stderr for the serving commands (the library only calls `advance(n)`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(label: str, total: int, unit: str = "items") -> Iterator[Callable[[int], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn(unit), TimeRemainingColumn(),
                  console=console, transient=not console.is_terminal) as prog:
        task = prog.add_task(label, total=total)
        yield lambda n: prog.advance(task, n)


def note(line: str) -> None:
    """One line for a person on stderr (stdout stays results only)."""
    import sys

    print(line, file=sys.stderr, flush=True)
