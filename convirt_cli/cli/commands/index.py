"""`convirt index build [INDEX] --faiss`: an approximate FAISS index beside the exact one, with its recall@10."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o

app = typer.Typer(no_args_is_help=True, help="Manage search indexes made by `convirt embed`.")


@app.command("build", no_args_is_help=False)
def build(
    index: Annotated[Path | None, typer.Argument(help="Index folder (default: the last one embedded).")] = None,
    faiss: Annotated[bool | None, typer.Option("--faiss", help="Build a FAISS index (needs pip install 'convirt[faiss]').")] = None,
    index_type: Annotated[str | None, typer.Option("--index-type", help="auto (HNSW while an exact scan is under ~2 GiB, else IVF-PQ) | hnsw | ivf | ivfpq | flat")] = None,
    kind: Annotated[str | None, typer.Option("--kind", hidden=True, help="Old spelling of --index-type.")] = None,
    nlist: Annotated[int | None, typer.Option(help="ivf: number of lists (default ~4 sqrt(N)).")] = None,
    m: Annotated[int | None, typer.Option(help="hnsw: neighbours per node.")] = None,
    ef_search: Annotated[int | None, typer.Option(help="hnsw: search breadth.")] = None,
    nprobe: Annotated[int | None, typer.Option(help="ivf: lists visited per query.")] = None,
    runs_dir: o.RunsDir = None,
    wait: o.Wait = None,
) -> None:
    """Write faiss.index into INDEX; `convirt retrieve` then uses it (unless --exact). Prints recall@10 vs exact."""
    import sys

    from convirt_cli.cli.progress import note
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import IndexBuildConfig
    from convirt_cli.torchfree.serve.index import build_faiss, latest_index, open_index

    if kind is not None:
        note("note: `index build --kind` is now --index-type (the old spelling will go)")
        index_type = kind if index_type is None else index_type
    cfg = resolve(IndexBuildConfig, index=index, faiss=faiss, index_type=index_type, nlist=nlist, m=m,
                  ef_search=ef_search, nprobe=nprobe, runs_dir=runs_dir, wait=wait)
    idx = open_index(cfg.index or latest_index(cfg.runs_dir))
    info = build_faiss(idx, cfg.index_type, cfg.nlist, cfg.m, cfg.ef_search, cfg.nprobe, wait=cfg.wait)
    print(json.dumps(info))
    print(f"faiss {info['index_type']} index ({info['chosen']}) of {info['count']} items in {idx.path}: recall@10 "
          f"vs exact {info['recall_at_10']:.3f}", file=sys.stderr)


@app.command("merge", no_args_is_help=True)
def merge(
    parts: Annotated[list[Path], typer.Argument(help="Index folders written by `convirt embed --parts N --part I`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder to write.")],
    wait: o.Wait = None,
) -> None:
    """Join the parts of a split embed into one index: ids and input order kept, model fingerprints must agree."""
    import sys

    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import IndexMergeConfig
    from convirt_cli.torchfree.serve.index import merge_indexes

    cfg = resolve(IndexMergeConfig, parts=parts, out=out, wait=wait)
    meta = merge_indexes(cfg.parts, cfg.out, wait=cfg.wait)
    print(f"merged {len(cfg.parts)} parts: {meta['count']} x {meta['dim']} {meta['kind']} embeddings -> {cfg.out}",
          file=sys.stderr)
