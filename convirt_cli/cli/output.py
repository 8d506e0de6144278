"""Where command results go: one table from a `--format` name to its writer.

RESULTS: `convirt retrieve`'s hits as table | jsonl | csv | paths | html. EXPLAINED: `convirt explain`'s maps as
png | html | jsonl | npy (files in its --out folder; jsonl's lines on stdout). REPORTS: the JSON reports of `evaluate`
and `classify` as table | json. Only results reach stdout (notes go to stderr), so pipelines can read them; a
file named by --out is written whole or not at all (temporary name, then rename; a symlink is followed, a device
or pipe written as a stream, an input never written: torchfree/outputs.py). A closed or full stdout is one line.
Typer-free and light to import: the fast lane (entry.py) uses it; rich and the gallery load only when their
format is asked for.
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


def _paths(results: list[dict], title: str, terminal: bool, null: bool = False) -> str:
    """One path a line (a newline inside one written as \\n, and said on stderr); null: NUL-ended, names exact."""
    from convirt_cli.torchfree.serve.formats import paths_with_newlines, to_paths

    escaped = 0 if null else paths_with_newlines(results)
    if escaped:
        from convirt_cli.cli.progress import note

        note(f"{escaped} results hold a newline, written as \\n; pass --null for names exactly as they are "
             "(NUL-separated, as `find -print0`; then `xargs -0`)")
    return to_paths(results, null=null)


def _html(results: list[dict], title: str, terminal: bool) -> str:
    from convirt_cli.torchfree.serve.gallery import render

    return render(results, title=title)


# --format -> writer(results, title, to a terminal?) -> the text to write
RESULTS: dict[str, Callable[[list[dict], str, bool], str]] = {
    "table": _table, "jsonl": _jsonl, "csv": _csv, "paths": _paths, "html": _html}


def _terminal() -> bool:
    return sys.stdout is not None and sys.stdout.isatty()


def _deliver(text: str, out: Path | None, inputs=()) -> None:
    from convirt_cli.torchfree.outputs import write_file, write_stdout

    if out is None:
        write_stdout(text)
        return
    write_file(Path(out), text, inputs=inputs)
    print(f"wrote {out}", file=sys.stderr)


def write_results(results: list[dict], fmt: str, out: Path | None = None, title: str = "convirt retrieve",
                  null: bool = False, inputs=()) -> None:
    """Search results ([{query, hits}]) in format `fmt` to stdout, or to the file `out` (never one of `inputs`)."""
    terminal = out is None and _terminal()
    text = _paths(results, title, terminal, null) if fmt == "paths" else RESULTS[fmt](results, title, terminal)
    _deliver(text, out, inputs)


def _json_report(report: dict, tables: Callable[[dict], Iterable[Any]]) -> str:
    return json.dumps(report, indent=2) + "\n"


def _table_report(report: dict, tables: Callable[[dict], Iterable[Any]]) -> str:
    return _render(tables(report), _terminal())


# --format -> writer(report, the command's rich tables of it) -> the text for stdout
REPORTS: dict[str, Callable[[dict, Callable[[dict], Iterable[Any]]], str]] = {
    "json": _json_report, "table": _table_report}


def check_report_out(cfg: Any) -> None:
    """A report's --out, checked before the work (outputs.check_file): not a folder, not an input."""
    if cfg.out is not None:
        from convirt_cli.torchfree.outputs import check_file

        check_file(cfg.out, inputs=report_inputs(cfg))


def report_inputs(cfg: Any) -> list:
    return [cfg.data, *cfg.join, cfg.prompts]


def write_report(report: dict, fmt: str, out: Path | None, tables: Callable[[dict], Iterable[Any]],
                 inputs=()) -> None:
    """A report in format `fmt` on stdout; with --out also its JSON, whatever the format (outputs.write_file)."""
    from convirt_cli.torchfree.outputs import write_file, write_stdout

    if out:
        write_file(Path(out), _json_report(report, tables), inputs=inputs)
    write_stdout(REPORTS[fmt](report, tables))


def _explained_html(rows: list[dict], out: Path) -> None:
    from convirt_cli.torchfree.explain.render import page
    from convirt_cli.torchfree.files import atomic_write_text

    for r in rows:
        r["picture"] = Path(r["picture"]).name  # the page sits beside its pictures
    atomic_write_text(Path(out) / "index.html", page(rows))  # inside the explain folder check_folder allowed
    print(f"wrote {Path(out) / 'index.html'}", file=sys.stderr)


def _explained_jsonl(rows: list[dict], out: Path) -> None:
    from convirt_cli.torchfree.outputs import write_stdout

    write_stdout("".join(json.dumps({k: v for k, v in r.items() if k not in ("name", "id")}) + "\n" for r in rows))


# --format -> (a picture per map?, a .npy per map?, what ends the run: a page, lines on stdout, or nothing)
EXPLAINED: dict[str, tuple[bool, bool, Callable[[list[dict], Path], None] | None]] = {
    "png": (True, False, None), "npy": (False, True, None), "html": (True, False, _explained_html),
    "jsonl": (False, True, _explained_jsonl)}


def write_explained(stream, fmt: str, out: Path) -> list[dict]:
    """explain's (image, maps) stream in format `fmt` into the folder `out` (and stdout for jsonl)."""
    from convirt_cli.torchfree.explain.outputs import write_maps

    pictures, arrays, finish = EXPLAINED[fmt]
    rows = write_maps(stream, out, pictures, arrays)
    if finish is not None:
        finish(rows, out)
    return rows
