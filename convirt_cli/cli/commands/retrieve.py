"""`convirt retrieve`: rank the items of an index by cosine to text and/or image queries.

Only results go to stdout (table | jsonl | csv | paths | html), so `| jq`, `| xargs` and `> page.html` work.
"""

from __future__ import annotations

import sys
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
    model: o.ServeModel = None,
    backend: o.Backend = None,
    device: o.Device = None,
    threads: o.Threads = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Find the k most similar items (text->image, image->image, ...) for one or many queries at once."""
    flags = dict(locals())
    from convirt_cli.cli.progress import note
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import RetrieveConfig
    from convirt_cli.torchfree.errors import ConvirtError
    from convirt_cli.torchfree.serve import formats
    from convirt_cli.torchfree.serve.backends import open_encoder
    from convirt_cli.torchfree.serve.index import index_meta, latest_index, open_index
    from convirt_cli.torchfree.serve.pipeline import encode_queries, split_queries
    from convirt_cli.torchfree.serve.pipeline import retrieve as run_retrieve

    cfg = resolve(RetrieveConfig, **flags)
    index_dir = cfg.index or latest_index(cfg.runs_dir)
    texts, images = list(cfg.query), [str(p) for p in cfg.image]
    if cfg.queries is not None:
        if cfg.queries == "-":
            lines = sys.stdin.read().splitlines()
        elif Path(cfg.queries).is_file():
            lines = Path(cfg.queries).read_text(encoding="utf-8").splitlines()
        else:
            raise ConvirtError(f"--queries {cfg.queries}: no such file (use - for stdin)")
        t, i = split_queries([s.strip() for s in lines if s.strip()])
        texts, images = texts + t, images + i
    meta = index_meta(index_dir)
    encoder = open_encoder(cfg.model or meta.get("model"), cfg.backend, cfg.device, cfg.runs_dir, cfg.threads,
                           note=note, bulk=len(texts) + len(images) > 256)
    idx = open_index(index_dir)
    if encoder.fingerprint != idx.meta["fingerprint"]:
        raise ConvirtError(f"{idx.path} was built by another model (fingerprint {idx.meta['fingerprint']}, "
                           f"{idx.meta.get('model')}); {encoder.path} is {encoder.fingerprint}. Re-embed with "
                           "this model or pass the index's --model")
    q, qs = encode_queries(encoder, texts, images)
    results = run_retrieve(idx, q, qs, cfg.k, cfg.exact)
    note(f"{len(qs)} queries x {idx.count} items ({idx.path}) with {encoder.backend} on {encoder.device_used}"
         f" ({encoder.path})")
    if not any(r["hits"] for r in results):
        raise ConvirtError("no results")
    if cfg.format == "html":
        from convirt_cli.torchfree.serve.gallery import render

        page = render(results, title=f"convirt retrieve: {idx.path.name}")
        if cfg.out:
            from convirt_cli.torchfree.files import atomic_write_text

            atomic_write_text(cfg.out, page)
            print(f"wrote {cfg.out}", file=sys.stderr)
        else:
            sys.stdout.write(page)
    elif cfg.format == "table":
        _table(results)
    else:
        sys.stdout.write({"jsonl": formats.to_jsonl, "csv": formats.to_csv, "paths": formats.to_paths}[cfg.format](results))


def _table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console.width = 200
    for r in results:
        q = r["query"]
        table = Table(title=f"query: {q.get('text', q.get('path'))}", title_justify="left")
        for col in ("rank", "score", "id", "item"):
            table.add_column(col)
        for h in r["hits"]:
            it = h["item"]
            table.add_row(str(h["rank"]), f"{h['score']:.4f}", str(it["id"]), it.get("path") or it.get("text", "")[:120])
        console.print(table)
