"""What a person sees on stderr while a command works, drawn with rich: the one RichReporter (the library's
Reporter, torchfree/report.py, for pretrain and finetune), and the reading bar and note line the serving
commands use on their own. stdout stays results only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(label: str, total: int, unit: str = "items") -> Iterator[Callable[[int], None]]:
    """A bar over `total` items; the library only calls the `advance(n)` it yields."""
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


class RichReporter:
    """torchfree.report.Reporter on stderr: reading bars, lines above the one long bar (steps or runs, with a
    status, elapsed time and ETA), tables. The library's text is printed as is (no rich markup in it)."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.bar = None

    def reading(self, label, total, unit):
        return progress_bar(label, total, unit)

    def note(self, message):
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def warn(self, message):
        from rich.markup import escape

        self.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    def start(self, label, total, done=0):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}", markup=False), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=self.console)
        self.task = self.bar.add_task(label, total=total, completed=done, status="")
        self.bar.start()

    def update(self, done, status):
        self.bar.update(self.task, completed=done, status=status)

    def table(self, title, columns, rows):
        from rich.table import Table

        self._stop()  # a table sums up: it goes below the finished bar
        t = Table(title=title)
        for i, name in enumerate(columns):
            t.add_column(name, justify="left" if i == 0 else "right")
        for row in rows:
            t.add_row(*row)
        self.console.print(t)

    def end(self, message):
        self._stop()
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def _stop(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
