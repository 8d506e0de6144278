"""The body of `convirt retrieve`, free of typer and pydantic: the typer command (commands/retrieve.py) and the
fast lane (entry.py) both call `run(cfg)`, `cfg` being any object with RetrieveConfig's fields.

Reading the queries (flags, a file, stdin) and printing the results are the CLI's; the search is the library's
Searcher (torchfree/serve/searcher.py), the same one `convirt serve` keeps open.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def split_queries(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """Lines of a --queries file: image paths (by a format's suffix) vs texts."""
    from convirt_cli.torchfree.formats import matched_suffix

    images = [s for s in lines if matched_suffix(s)]
    return [s for s in lines if s not in images], images


def read_queries(cfg: Any) -> list:
    """Queries from --query, --image, --like and --queries FILE|-: texts first, then images (a volume: one query
    per slice the --slices policy picks), then items."""
    from convirt_cli.torchfree.errors import ConvirtError
    from convirt_cli.torchfree.serve.searcher import Query

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
    if images:
        from convirt_cli.torchfree.data.volumes import volume_slices

        image_queries = [Query(image=p, slice=k) for p in images for k in volume_slices(p, cfg.slices)]
    else:
        image_queries = []
    return [Query(text=t) for t in texts] + image_queries + [Query(like=i) for i in cfg.like]


def run(cfg: Any) -> None:
    from convirt_cli.cli.output import write_results
    from convirt_cli.cli.progress import note
    from convirt_cli.torchfree.errors import ConvirtError
    from convirt_cli.torchfree.serve.index import latest_index
    from convirt_cli.torchfree.serve.searcher import Searcher

    index_dir = cfg.index or latest_index(cfg.runs_dir)
    queries = read_queries(cfg)
    if not queries:
        raise ConvirtError("no query: pass --query TEXT, --image PATH, --like ID or --queries FILE|-")
    searcher = Searcher(index_dir, cfg.model, backend=cfg.backend, device=cfg.device, runs_dir=cfg.runs_dir,
                        threads=cfg.threads, bulk=len(queries) > 256, note=note)
    results = searcher.search(queries, k=cfg.k, offset=cfg.offset, where=cfg.where, exact=cfg.exact)
    idx, enc = searcher.index(), searcher.encoder
    note(f"{len(queries)} queries x {idx.count} items ({idx.path}) with {enc.backend} on {enc.device_used}"
         f" ({enc.path})")
    if not any(r["hits"] for r in results):
        raise ConvirtError("no results" + (f" (--where {' '.join(cfg.where)} keeps no item)" if cfg.where else "")
                           + (f" past --offset {cfg.offset}" if cfg.offset else ""))
    write_results(results, cfg.format, cfg.out, title=f"convirt retrieve: {idx.path.name}")
