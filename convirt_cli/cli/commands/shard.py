"""`convirt shard DATA --out SHARDS`: WebDataset tar shards that `convirt pretrain SHARDS` streams."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o


def shard(
    data: Annotated[Path, typer.Argument(help="Data folder or table, as pretrain reads it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the shards and shards.json.")],
    wait: o.Wait = None,
    per_shard: Annotated[int | None, typer.Option(help="Samples per tar shard (default 1000).")] = None,
    max_side: Annotated[int | None, typer.Option(help="Downscale images whose longer side is larger, once (stored as PNG).")] = None,
    window: o.Window = None,
    slices: o.Slices = None,
    workers: Annotated[int | None, typer.Option(help="Processes decoding and encoding images (default: one per CPU core).")] = None,
    image_col: o.ImageCol = None,
    text_col: o.TextCol = None,
    sections: o.Sections = None,
    no_text: Annotated[bool, typer.Option("--no-text", help="Image-only shards (for --objective dino / simclr).")] = False,
    split_col: o.SplitCol = None,
    patient_col: o.PatientCol = None,
    val_fraction: o.ValFraction = None,
    encoding: o.Encoding = None,
    strict: o.Strict = None,
    where: o.Where = None,
    join: o.Join = None,
    seed: o.Seed = None,
) -> None:
    """Write DATA as WebDataset shards: unreadable images skipped and counted as pretrain counts them, the
    train/val split decided now and recorded in shards.json. Then: convirt pretrain SHARDS."""
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import ShardConfig

    cfg = resolve(ShardConfig, data=data, out=out, wait=wait, per_shard=per_shard, max_side=max_side, window=window,
                  slices=slices, workers=workers, image_col=image_col, text_col=text_col, sections=sections,
                  split_col=split_col, patient_col=patient_col, val_fraction=val_fraction, encoding=encoding,
                  strict=strict, where=where, join=join, seed=seed)
    _run(cfg, None if no_text else cfg.text_col)


def _run(cfg, text_col: str | None) -> None:
    from convirt_cli.cli.progress import note, progress_bar
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.data.shard_writer import write_shards
    from convirt_cli.torchfree.data.split import describe_split, split_rows
    from convirt_cli.torchfree.data.validate import validate_rows
    from convirt_cli.torchfree.outputs import check_folder
    from convirt_cli.torchfree.processes import cpu_workers

    check_folder(cfg.out, "shards", inputs=[cfg.data, *cfg.join])  # before any work: a refused --out is said at once
    workers = cfg.workers or cpu_workers()
    rows = read_rows(cfg.data, cfg.image_col, text_col, cfg.encoding, cfg.sections, workers=workers,
                     progress=progress_bar, join=cfg.join, warn=lambda line: note(f"warning: {line}"),
                     slices=cfg.slices)
    checked = validate_rows(rows, need_text=text_col is not None, strict=cfg.strict, where=cfg.where,
                            progress=progress_bar)
    splits = split_rows(checked.usable, cfg.val_fraction, 0.0, cfg.split_col, cfg.patient_col, cfg.seed)
    n = sum(len(v) for v in splits.values())
    with progress_bar(f"shard {cfg.data.name}", n, "images") as advance:
        meta = write_shards({k: v for k, v in splits.items() if k in ("train", "val")}, cfg.out, cfg.per_shard,
                            cfg.max_side, cfg.window, on_row=lambda: advance(1), skipped=checked.skipped,
                            workers=cfg.workers, sections=cfg.sections if text_col else (), where=cfg.where,
                            join=[str(p) for p in cfg.join], slices=cfg.slices, wait=cfg.wait,
                            inputs=[cfg.data, *cfg.join])
    counts = ", ".join(f"{k} {v['count']} in {len(v['shards'])} shards" for k, v in meta["splits"].items())
    skipped = sum(meta["skipped"].values())
    note(f"{counts}; {skipped} skipped{' ' + str(dict(meta['skipped'])) if skipped else ''}; split "
         f"{describe_split(checked.usable, cfg.split_col, cfg.patient_col)} -> {cfg.out}")
