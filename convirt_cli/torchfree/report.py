"""How a long library call (pretrain, finetune) talks to a person: one small protocol, plain text.

The CLI draws it on stderr with rich (cli/progress.py: RichReporter); NullReporter, the default, drops it, so
the library itself prints nothing and never imports rich. The words are the library's (it knows what happened),
the drawing is the CLI's.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from convirt_cli.torchfree.progress import Advance


class Reporter(Protocol):
    def reading(self, label: str, total: int, unit: str) -> AbstractContextManager[Advance | None]:
        """A ProgressBar (torchfree/progress.py) for reading `total` items (its Advance None: nobody watches)."""

    def note(self, message: str) -> None:
        """One line for a person (above the bar while one runs)."""

    def warn(self, message: str) -> None: ...

    def start(self, label: str, total: int, done: int = 0) -> None:
        """A bar over `total` steps (or runs), `done` of them already done (a resumed run)."""

    def update(self, done: int, status: str) -> None:
        """The bar at `done`, with a short status (loss, samples/s; which run, which epoch)."""

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None: ...

    def end(self, message: str) -> None:
        """The bar stops; the closing line (where the results are)."""


class NullReporter:
    def reading(self, label, total, unit): return nullcontext(None)
    def note(self, message): pass
    def warn(self, message): pass
    def start(self, label, total, done=0): pass
    def update(self, done, status): pass
    def table(self, title, columns, rows): pass
    def end(self, message): pass


def data_lines(summary: dict, what: str) -> list[str]:
    """What was read, skipped (counted by reason, the first few named) and split, as lines for a person.

    summary: found, usable, skipped (a count), skip_reasons {reason: n}, skipped_examples [(source, reason)],
    splits {train, val, test: n}, split_by, image_kinds; test_unused: the test split is not used (pretraining)."""
    reasons = ", ".join(f"{n} {r}" for r, n in summary["skip_reasons"].items()) or "none"
    sp = summary["splits"]
    test = f" / test {sp['test']}" + (" (unused)" if summary.get("test_unused") else "") if sp.get("test") else ""
    first = (f"{what} found {summary['found']}, usable {summary['usable']}, skipped {summary['skipped']} ({reasons}); "
             f"split {summary.get('split_by', '')}: train {sp['train']} / val {sp['val']}{test}")
    lines = [first]
    examples = summary["skipped_examples"]
    lines += [f"  skip {source}: {reason}" for source, reason in examples]
    if summary["skipped"] > len(examples):
        lines.append(f"  ... and {summary['skipped'] - len(examples)} more")
    if summary.get("image_kinds"):
        lines.append(f"images {summary['image_kinds']} (--where COL=V,... keeps some)")
    return lines
