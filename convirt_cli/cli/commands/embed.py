"""`convirt embed INPUT --out INDEX`: images or texts -> an index folder (torch-free with an ONNX export)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o


def embed(
    input: Annotated[str, typer.Argument(help="Data folder or table (as pretrain reads), folder of images, text file of lines, an image, or - for stdin.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Index folder to write.")] = None,
    model: o.ServeModel = None,
    backend: o.Backend = None,
    kind: Annotated[str | None, typer.Option(help="image | text (default: guessed; tables: image).")] = None,
    append: Annotated[bool | None, typer.Option("--append", help="Add to the index in --out (same model, same kind).")] = None,
    num_shards: Annotated[int | None, typer.Option(help="Split INPUT into N contiguous parts and embed one (--shard-index); join the parts with `convirt index merge`.")] = None,
    shard_index: Annotated[int | None, typer.Option(help="Which part to embed, 0..N-1 (e.g. $SLURM_ARRAY_TASK_ID).")] = None,
    image_col: o.ImageCol = None,
    text_col: o.TextCol = None,
    slices: o.Slices = None,
    batch_size: o.BatchSize = None,
    device: o.Device = None,
    threads: o.Threads = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Embed images or texts into an index (embeddings.npy + items.jsonl + index.json) for `convirt retrieve`."""
    flags = dict(locals())
    from rich.console import Console

    from convirt_cli.cli.progress import note, progress_bar
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import EmbedConfig
    from convirt_cli.torchfree.serve.backends import open_encoder
    from convirt_cli.torchfree.serve.index import set_latest_index
    from convirt_cli.torchfree.serve.inputs import read_inputs
    from convirt_cli.torchfree.serve.pipeline import embed_items, part_bounds

    cfg = resolve(EmbedConfig, **flags)
    console = Console(stderr=True)
    kind_, items = read_inputs(cfg.input, cfg.kind, cfg.image_col, cfg.text_col, slices=cfg.slices)
    encoder = open_encoder(cfg.model, cfg.backend, cfg.device, cfg.runs_dir, cfg.threads, note=note)
    lo, hi = part_bounds(len(items), cfg.num_shards, cfg.shard_index)
    title = f"embed {kind_}s ({encoder.backend})" + (f", part {cfg.shard_index} of {cfg.num_shards}"
                                                      if cfg.num_shards > 1 else "")
    with progress_bar(title, hi - lo, kind_ + "s") as advance:
        meta = embed_items(encoder, kind_, items, cfg.out, cfg.append, cfg.batch_size, advance,
                           (cfg.shard_index, cfg.num_shards))
    set_latest_index(cfg.runs_dir, cfg.out)
    skipped = meta["skipped_now"]
    for s in skipped[:10]:
        console.print(f"  [yellow]skip[/] id {s['id']} {s.get('path', s.get('source'))}: {s['reason']}")
    if len(skipped) > 10:
        console.print(f"  ... and {len(skipped) - 10} more (all listed in {cfg.out}/index.json)")
    console.print(f"[green]indexed[/] {meta['added']} {kind_}s ({len(skipped)} skipped) -> [bold]{cfg.out}[/] "
                  f"now {meta['count']} x {meta['dim']}, backend {encoder.backend} on {encoder.device_used}")
