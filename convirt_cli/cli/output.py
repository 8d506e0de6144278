"""Where command results go: one table from a `--format` name to its writer.

RESULTS: `convirt retrieve`'s hits as table | jsonl | csv | paths | html. REPORTS: the JSON reports of `evaluate`
and `classify` as table | json. Only results reach stdout (notes go to stderr), so pipelines can read them; a
file named by --out is written whole or not at all (temporary name, then rename). Typer-free and light to
import: the fast lane (entry.py) uses it; rich and the gallery load only when their format is asked for.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _render(tables: Iterable[Any], terminal: bool) -> str:
    """rich tables -> text; styled only for a terminal (a file or a pipe gets plain text, 200 columns wide)."""
    import shutil

    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=shutil.get_terminal_size().columns if terminal else 200)
    for t in tables:
        console.print(t)
    return buf.getvalue()


def _hits_tables(results: list[dict]):
    from rich.table import Table

    for r in results:
        q = r["query"]
        shown = q.get("text") or q.get("path") or q.get("image") or f"more like id {q.get('like')}"
        at = "" if q.get("slice") is None else f" (slice {q['slice']})"
        table = Table(title=f"query: {shown}{at}", title_justify="left")
        for col in ("rank", "score", "id", "item"):
            table.add_column(col)
        for h in r["hits"]:
            it = h["item"]
            item = it.get("path") or it.get("text", "")[:120]
            table.add_row(str(h["rank"]), f"{h['score']:.4f}", str(it["id"]),
                          item if it.get("slice") is None else f"{item} (slice {it['slice']})")
        yield table


def _table(results: list[dict], title: str, terminal: bool) -> str:
    return _render(_hits_tables(results), terminal)


def _jsonl(results: list[dict], title: str, terminal: bool) -> str:
    from convirt_cli.torchfree.serve.formats import to_jsonl

    return to_jsonl(results)


def _csv(results: list[dict], title: str, terminal: bool) -> str:
    from convirt_cli.torchfree.serve.formats import to_csv

    return to_csv(results)


def _paths(results: list[dict], title: str, terminal: bool) -> str:
    from convirt_cli.torchfree.serve.formats import to_paths

    return to_paths(results)


def _html(results: list[dict], title: str, terminal: bool) -> str:
    from convirt_cli.torchfree.serve.gallery import render

    return render(results, title=title)


# --format -> writer(results, title, to a terminal?) -> the text to write
RESULTS: dict[str, Callable[[list[dict], str, bool], str]] = {
    "table": _table, "jsonl": _jsonl, "csv": _csv, "paths": _paths, "html": _html}


def _deliver(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    from convirt_cli.torchfree.files import atomic_write_text

    atomic_write_text(Path(out), text)
    print(f"wrote {out}", file=sys.stderr)


def write_results(results: list[dict], fmt: str, out: Path | None = None, title: str = "convirt retrieve") -> None:
    """Search results ([{query, hits}]) in format `fmt` to stdout, or to the file `out`."""
    _deliver(RESULTS[fmt](results, title, out is None and sys.stdout.isatty()), out)


def _json_report(report: dict, tables: Callable[[dict], Iterable[Any]]) -> str:
    return json.dumps(report, indent=2) + "\n"


def _table_report(report: dict, tables: Callable[[dict], Iterable[Any]]) -> str:
    return _render(tables(report), sys.stdout.isatty())


# --format -> writer(report, the command's rich tables of it) -> the text for stdout
REPORTS: dict[str, Callable[[dict, Callable[[dict], Iterable[Any]]], str]] = {
    "json": _json_report, "table": _table_report}


def write_report(report: dict, fmt: str, out: Path | None, tables: Callable[[dict], Iterable[Any]]) -> None:
    """A report in format `fmt` on stdout; with --out also its JSON, whatever the format (atomic)."""
    if out:
        from convirt_cli.torchfree.files import atomic_write_text

        atomic_write_text(Path(out), _json_report(report, tables))
    sys.stdout.write(REPORTS[fmt](report, tables))
