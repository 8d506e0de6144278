"""`convirt embed INPUT --out INDEX`: images or texts -> an index folder (torch-free with an ONNX export)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o


def _parts_flags(parts: int | None, part: int | None, num_shards: int | None,
                 shard_index: int | None) -> tuple[int | None, int | None]:
    """--parts/--part, or their old spellings --num-shards/--shard-index (one note says so)."""
    if num_shards is None and shard_index is None:
        return parts, part
    from convirt_cli.cli.progress import note

    note("note: --num-shards/--shard-index are now --parts/--part (the old spellings will go)")
    return (num_shards if parts is None else parts), (shard_index if part is None else part)


def embed(
    input: Annotated[str, typer.Argument(help="Data folder or table (as pretrain reads), folder of images, text file of lines, an image, or - for stdin.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Index folder to write.")] = None,
    model: o.ServeModel = None,
    backend: o.Backend = None,
    kind: Annotated[str | None, typer.Option(help="image | text (default: guessed; tables: image).")] = None,
    append: Annotated[bool | None, typer.Option("--append", help="Add to the index in --out (same model, same kind).")] = None,
    wait: o.Wait = None,
    columns: Annotated[str | None, typer.Option(help="Metadata columns each item keeps, comma list (e.g. view,sex,finding; DICOMs: their allow-listed tags), for `retrieve --where`. Only these reach the index.")] = None,
    parts: Annotated[int | None, typer.Option(help="Split INPUT into N contiguous parts and embed one (--part); join the parts with `convirt index merge`.")] = None,
    part: Annotated[int | None, typer.Option(help="Which part to embed, 0..N-1 (e.g. $SLURM_ARRAY_TASK_ID).")] = None,
    num_shards: Annotated[int | None, typer.Option(hidden=True, help="Old spelling of --parts.")] = None,
    shard_index: Annotated[int | None, typer.Option(hidden=True, help="Old spelling of --part.")] = None,
    image_col: o.ImageCol = None,
    text_col: o.TextCol = None,
    slices: o.Slices = None,
    batch_size: o.BatchSize = None,
    device: o.Device = None,
    threads: o.Threads = None,
    workers: o.Workers = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Embed images or texts into an index (embeddings.npy + items.jsonl + index.json) for `convirt retrieve`."""
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import EmbedConfig

    parts, part = _parts_flags(parts, part, num_shards, shard_index)
    cfg = resolve(EmbedConfig, input=input, out=out, model=model, backend=backend, kind=kind, append=append,
                  wait=wait, columns=columns, parts=parts, part=part, image_col=image_col, text_col=text_col,
                  slices=slices, batch_size=batch_size, device=device, threads=threads, workers=workers,
                  runs_dir=runs_dir)
    _run(cfg)


def _run(cfg) -> None:
    from rich.console import Console

    from convirt_cli.cli.progress import note, progress_bar
    from convirt_cli.torchfree.outputs import check_folder
    from convirt_cli.torchfree.serve.backends import open_encoder
    from convirt_cli.torchfree.serve.embed import embed_items, part_bounds
    from convirt_cli.torchfree.serve.index import set_latest_index
    from convirt_cli.torchfree.serve.inputs import read_inputs

    console = Console(stderr=True)
    check_folder(cfg.out, "index", inputs=[cfg.input])  # before any work: a refused --out is said at once
    kind_, items = read_inputs(cfg.input, cfg.kind, cfg.image_col, cfg.text_col, slices=cfg.slices,
                               columns=cfg.columns)
    encoder = open_encoder(cfg.model, cfg.backend, cfg.device, cfg.runs_dir, cfg.threads, note=note,
                           workers=cfg.workers)
    lo, hi = part_bounds(len(items), cfg.parts, cfg.part)
    title = f"embed {kind_}s ({encoder.backend})" + (f", part {cfg.part} of {cfg.parts}" if cfg.parts > 1 else "")
    with progress_bar(title, hi - lo, kind_ + "s") as advance:
        meta = embed_items(encoder, kind_, items, cfg.out, cfg.append, cfg.batch_size, advance, (cfg.part, cfg.parts),
                           wait=cfg.wait, inputs=[cfg.input])
    set_latest_index(cfg.runs_dir, cfg.out)
    skipped = meta["skipped_now"]
    for s in skipped[:10]:
        console.print(f"  [yellow]skip[/] id {s['id']} {s.get('path', s.get('source'))}: {s['reason']}")
    if len(skipped) > 10:
        console.print(f"  ... and {len(skipped) - 10} more (all listed in {cfg.out}/index.json)")
    console.print(f"[green]indexed[/] {meta['added']} {kind_}s ({len(skipped)} skipped) -> [bold]{cfg.out}[/] "
                  f"now {meta['count']} x {meta['dim']}, backend {encoder.backend} on {encoder.device_used}")
