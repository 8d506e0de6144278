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
    """Queries from --query, --image, --like and --queries FILE|- (any readable file: /dev/null, <(...)): texts
    first, then images (a volume: one query per slice the --slices policy picks), then items. An empty query is an
    error, as are a queries file with none and one that is not UTF-8."""
    from convirt_cli.torchfree.errors import ConvirtError
    from convirt_cli.torchfree.serve.searcher import Query

    if any(not q.strip() for q in cfg.query):
        raise ConvirtError("--query: an empty query; give the words to search for")
    texts, images = list(cfg.query), [str(p) for p in cfg.image]
    if cfg.queries is not None:
        lines = [s.strip() for s in _query_lines(cfg.queries).splitlines() if s.strip()]
        if not lines:
            raise ConvirtError(f"--queries {cfg.queries}: no queries in it (one text or image path a line)")
        t, i = split_queries(lines)
        texts, images = texts + t, images + i
    if images:
        from convirt_cli.torchfree.data.volumes import volume_slices

        image_queries = [Query(image=p, slice=k) for p in images for k in volume_slices(p, cfg.slices)]
    else:
        image_queries = []
    return [Query(text=t) for t in texts] + image_queries + [Query(like=i) for i in cfg.like]


def _query_lines(spec: str) -> str:
    from convirt_cli.torchfree.errors import ConvirtError

    name = "stdin" if spec == "-" else spec
    try:
        if spec == "-":
            if sys.stdin is None:
                raise ConvirtError("--queries -: stdin is closed; pipe the queries in or name a file")
            raw = sys.stdin.buffer.read()
        elif Path(spec).is_dir():
            raise ConvirtError(f"--queries {spec}: a folder; name a file of queries, one a line")
        else:
            raw = Path(spec).read_bytes()  # a pipe or /dev/null reads as a file does
    except FileNotFoundError:
        raise ConvirtError(f"--queries {spec}: no such file (use - for stdin)") from None
    except OSError as e:
        raise ConvirtError(f"--queries {name}: cannot read it ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConvirtError(f"--queries {name}:{line}: not UTF-8 (byte {e.start}); save the file as UTF-8") from None


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
    inputs = [cfg.queries, *cfg.image, index_dir]
    if cfg.out is not None:  # before the work: a refused --out is said at once
        from convirt_cli.torchfree.outputs import check_file

        check_file(cfg.out, inputs=inputs)
    searcher = Searcher(index_dir, cfg.model, backend=cfg.backend, device=cfg.device, runs_dir=cfg.runs_dir,
                        threads=cfg.threads, workers=cfg.workers, bulk=len(queries) > 256, note=note)
    results = searcher.search(queries, k=cfg.k, offset=cfg.offset, where=cfg.where, exact=cfg.exact)
    idx, enc = searcher.index(), searcher.encoder
    note(f"{len(queries)} queries x {idx.count} items ({idx.path}) with {enc.backend} on {enc.device_used}"
         f" ({enc.path})")
    if not any(r["hits"] for r in results):
        raise ConvirtError("no results" + (f" (--where {' '.join(cfg.where)} keeps no item)" if cfg.where else "")
                           + (f" past --offset {cfg.offset}" if cfg.offset else ""))
    write_results(results, cfg.format, cfg.out, title=f"convirt retrieve: {idx.path.name}", null=cfg.null,
                  inputs=inputs)
