"""What `convirt retrieve` does once its config is resolved: read the queries, encode them, search the index,
print the results. Free of typer and pydantic, so that the fast entry (cli/entry.py) can call it as the typer
command does: `cfg` is any object with RetrieveConfig's fields."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def read_queries(cfg: Any) -> tuple[list[str], list[str]]:
    """(texts, image paths) from --query, --image and --queries FILE|-."""
    from convirt_cli.torchfree.errors import ConvirtError
    from convirt_cli.torchfree.serve.pipeline import split_queries

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
    return texts, images


def retrieve(cfg: Any) -> None:
    from convirt_cli.cli.progress import note
    from convirt_cli.torchfree.errors import ConvirtError
    from convirt_cli.torchfree.serve import formats
    from convirt_cli.torchfree.serve.backends import open_encoder
    from convirt_cli.torchfree.serve.index import latest_index, open_index
    from convirt_cli.torchfree.serve.pipeline import encode_queries
    from convirt_cli.torchfree.serve.pipeline import retrieve as search

    index_dir = cfg.index or latest_index(cfg.runs_dir)
    texts, images = read_queries(cfg)
    idx = open_index(index_dir)
    encoder = open_encoder(cfg.model or idx.meta.get("model"), cfg.backend, cfg.device, cfg.runs_dir, cfg.threads,
                           note=note, bulk=len(texts) + len(images) > 256)
    if encoder.fingerprint != idx.meta["fingerprint"]:
        raise ConvirtError(f"{idx.path} was built by another model (fingerprint {idx.meta['fingerprint']}, "
                           f"{idx.meta.get('model')}); {encoder.path} is {encoder.fingerprint}. Re-embed with "
                           "this model or pass the index's --model")
    q, qs = encode_queries(encoder, texts, images, cfg.slices)
    results = search(idx, q, qs, cfg.k, cfg.exact)
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
        at = "" if q.get("slice") is None else f" (slice {q['slice']})"
        table = Table(title=f"query: {q.get('text', q.get('path'))}{at}", title_justify="left")
        for col in ("rank", "score", "id", "item"):
            table.add_column(col)
        for h in r["hits"]:
            it = h["item"]
            item = it.get("path") or it.get("text", "")[:120]
            table.add_row(str(h["rank"]), f"{h['score']:.4f}", str(it["id"]),
                          item if it.get("slice") is None else f"{item} (slice {it['slice']})")
        console.print(table)
