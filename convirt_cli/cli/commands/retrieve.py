"""`convirt retrieve`: rank the items of an index by cosine to text, image or item queries.

Only results go to stdout (table | jsonl | csv | paths | html), so `| jq`, `| xargs` and `> page.html` work.
The work itself is in convirt_cli/cli/retrieve.py, which the fast entry (cli/entry.py) calls without typer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o


def retrieve(
    query: Annotated[list[str] | None, typer.Option("--query", "-q", help="Text query (repeatable).")] = None,
    image: Annotated[list[Path] | None, typer.Option("--image", help="Image query (repeatable).")] = None,
    like: Annotated[list[int] | None, typer.Option("--like", help="Item id: more like this item, itself left out (repeatable).")] = None,
    queries: Annotated[str | None, typer.Option(help="File of queries, one per line (texts or image paths), or - for stdin.")] = None,
    index: o.IndexDir = None,
    k: Annotated[int | None, typer.Option("-k", "--k", help="Results per query.")] = None,
    offset: Annotated[int | None, typer.Option("--offset", help="Skip this many results first (the next page: --offset 10).")] = None,
    where: Annotated[list[str] | None, typer.Option("--where", help="Keep items whose stored COLUMN (`embed --columns`) is one of the values, e.g. view=PA,AP, or none of them, e.g. 'sex!=F'; repeatable.")] = None,
    format: Annotated[str | None, typer.Option("--format", "-f", help="table | jsonl | csv | paths | html")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the results to this file instead of stdout.")] = None,
    null: Annotated[bool | None, typer.Option("--null", help="paths: end each with NUL instead of a newline, names exactly as they are (like find -print0; then xargs -0).")] = None,
    exact: Annotated[bool | None, typer.Option("--exact", help="Exact search even when the index has a FAISS index.")] = None,
    slices: o.Slices = None,
    model: o.ServeModel = None,
    backend: o.Backend = None,
    device: o.Device = None,
    threads: o.Threads = None,
    workers: o.Workers = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Find the k most similar items (text->image, image->image, item->items ...) for one or many queries at once."""
    from convirt_cli.cli.retrieve import run
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import RetrieveConfig

    run(resolve(RetrieveConfig, query=query, image=image, like=like, queries=queries, index=index, k=k, offset=offset,
                where=where, format=format, out=out, null=null, exact=exact, slices=slices, model=model, backend=backend,
                device=device, threads=threads, workers=workers, runs_dir=runs_dir))
