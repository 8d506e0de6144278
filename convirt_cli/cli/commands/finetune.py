"""`convirt finetune DATA`: flags -> FinetuneConfig -> torch.finetune.sweep.finetune, drawn with rich."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o


def finetune(
    data: Annotated[Path, typer.Argument(help="Labelled table (CSV/JSONL) or a folder holding manifest.csv / pairs.csv.")],
    init: Annotated[str | None, typer.Option(help="Comma list of starting points: run dirs (any pretraining), presets, `random` (the first run's own tower untrained; with --model, that preset), `latest`.")] = None,
    model: o.Model = None,
    pretrained: o.Pretrained = None,
    label: Annotated[str | None, typer.Option(help="One label column: class names (multiclass), `|`-separated names (multilabel), or a number with --task regression.")] = None,
    labels: Annotated[str | None, typer.Option(help="Several 0/1 label columns, comma-separated (multilabel).")] = None,
    task: Annotated[str | None, typer.Option(help="auto | multilabel | multiclass | regression | segmentation (a linear head on frozen patch features; needs --mask-col).")] = None,
    mask_col: Annotated[str | None, typer.Option(help="segmentation: column of binary mask images (paths relative to the table).")] = None,
    missing: Annotated[str | None, typer.Option(help="Extra values meaning 'no label', comma-separated (e.g. -1 for uncertain, todo). Blank/NaN always are.")] = None,
    mode: Annotated[str | None, typer.Option(help="linear (frozen tower, cached features, logistic head) | full (whole tower, paper's augmentations).")] = None,
    label_fraction: Annotated[str | None, typer.Option(help="Comma list of training-label fractions, e.g. 0.01,0.1,1.0.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds per fraction (label sample, head init, augmentation).")] = None,
    epochs: o.Epochs = None,
    patience: Annotated[int | None, typer.Option(help="full: stop after this many epochs without a better val metric.")] = None,
    batch_size: o.BatchSize = None,
    lr: o.Lr = None,
    weight_decay: Annotated[float | None, typer.Option(help="full: AdamW weight decay.")] = None,
    image_size: o.ImageSize = None,
    window: Annotated[str | None, typer.Option(help="Preset inits: high-bit-depth grey levels to 8 bits (auto | minmax | percentile:LO,HI | fixed:C,W; default the preset's). A run init reads pixels with its own window (kept in its model.json); another one is an error.")] = None,
    metric: Annotated[str | None, typer.Option(help="Table/plot/early-stopping metric (default macro_auc | auc | r2).")] = None,
    bootstrap: Annotated[int | None, typer.Option(help="Bootstrap resamples for the test 95% intervals (0: off).")] = None,
    out: o.Out = None,
    wait: o.Wait = None,
    name: Annotated[str | None, typer.Option(help="Output folder name under runs/ (default finetune-MODE-timestamp).")] = None,
    save_models: Annotated[bool | None, typer.Option("--save-models/--no-save-models", help="Save each classifier under OUT/models/.")] = None,
    dry_run: Annotated[bool | None, typer.Option("--dry-run", help="Read, label and split the data and check the inits, then stop: nothing written (classification tasks decode no image).")] = None,
    plot: Annotated[bool | None, typer.Option("--plot/--no-plot", help="Draw data_efficiency.png.")] = None,
    seed: o.Seed = None,
    num_workers: o.NumWorkers = None,
    device: o.Device = None,
    image_col: o.ImageCol = None,
    split_col: o.SplitCol = None,
    patient_col: o.PatientCol = None,
    val_fraction: o.ValFraction = None,
    test_fraction: Annotated[float | None, typer.Option(help="Fraction of patients held out for test (without --split-col).")] = None,
    strict: o.Strict = None,
    where: o.Where = None,
    join: o.Join = None,
    encoding: o.Encoding = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Linear probe or fine-tune image towers over label fractions and seeds; print the data-efficiency table."""
    from transformers.utils import logging as hf_logging

    from convirt_cli.cli.progress import RichReporter
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torch.finetune.sweep import finetune as run_finetune
    from convirt_cli.torchfree.config import FinetuneConfig
    from convirt_cli.torchfree.errors import ConvirtError

    if label is not None and labels is not None:
        raise ConvirtError("pass --label COL or --labels A,B, not both")
    hf_logging.disable_progress_bar()  # save_pretrained's shard bars would clutter ours
    cfg = resolve(
        FinetuneConfig, data=data, init=init, model=model, pretrained=pretrained,
        labels=labels if labels is not None else label, task=task, mask_col=mask_col, missing=missing, mode=mode,
        label_fraction=label_fraction, seeds=seeds, epochs=epochs, patience=patience, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, image_size=image_size, window=window, metric=metric, bootstrap=bootstrap,
        out=out, name=name, wait=wait, save_models=save_models, dry_run=dry_run, plot=plot, seed=seed,
        num_workers=num_workers, device=device, image_col=image_col, split_col=split_col,
        patient_col=patient_col, val_fraction=val_fraction, test_fraction=test_fraction, strict=strict,
        where=where, join=join, encoding=encoding, runs_dir=runs_dir)
    run_finetune(cfg, RichReporter())
