"""`convirt retrieve`: rank the items of an index by cosine to text and/or image queries.

Only results go to stdout (table | jsonl | csv | paths | html), so `| jq`, `| xargs` and `> page.html` work.
The work itself is in convirt_cli/cli/retrieval.py, which the fast entry (cli/entry.py) calls without typer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o


def retrieve(
    query: Annotated[list[str] | None, typer.Option("--query", "-q", help="Text query (repeatable).")] = None,
    image: Annotated[list[Path] | None, typer.Option("--image", help="Image query (repeatable).")] = None,
    queries: Annotated[str | None, typer.Option(help="File of queries, one per line (texts or image paths), or - for stdin.")] = None,
    index: o.IndexDir = None,
    k: Annotated[int | None, typer.Option("-k", "--k", help="Results per query.")] = None,
    format: Annotated[str | None, typer.Option("--format", "-f", help="table | jsonl | csv | paths | html")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="html: write the gallery here instead of stdout.")] = None,
    exact: Annotated[bool | None, typer.Option("--exact", help="Exact search even when the index has a FAISS index.")] = None,
    slices: o.Slices = None,
    model: o.ServeModel = None,
    backend: o.Backend = None,
    device: o.Device = None,
    threads: o.Threads = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Find the k most similar items (text->image, image->image, ...) for one or many queries at once."""
    flags = dict(locals())
    from convirt_cli.cli.retrieval import retrieve as run
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import RetrieveConfig

    run(resolve(RetrieveConfig, **flags))
