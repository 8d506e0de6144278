"""`convirt pretrain DATA`: flags -> PretrainConfig -> train.loop.pretrain, drawn with rich."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o
from convirt_cli.torchfree.objectives import get_objective, list_objectives

OBJECTIVES = " | ".join(f"{n} ({get_objective(n).about}" + (f"; default model {get_objective(n).default_model}"
                                                               if get_objective(n).default_model else "") + ")"
                        for n in list_objectives())


def pretrain(
    data: Annotated[Path | None, typer.Argument(help="Folder with pairs.csv / pairs.jsonl, such a file, or a folder of images with .txt reports (not needed with --resume).")] = None,
    objective: Annotated[str | None, typer.Option(help=f"{OBJECTIVES}.")] = None,
    model: o.Model = None,
    pretrained: o.Pretrained = None,
    image_weights: o.ImageWeights = None,
    text_weights: o.TextWeights = None,
    image_init: Annotated[Path | None, typer.Option(help="Start the image tower from this run's (e.g. a DINO run, then ConVIRT on reports).")] = None,
    out: o.Out = None,
    name: Annotated[str | None, typer.Option(help="Run name under runs/ (default: preset-timestamp).")] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help="Continue the run in --out (or the newest one) from its newest readable checkpoint, with its own settings.")] = None,
    wait: o.Wait = None,
    dry_run: Annotated[bool | None, typer.Option("--dry-run", help="Read, check and split the data and print the recipe, then stop: nothing is written (check an archive before GPU hours).")] = None,
    epochs: o.Epochs = None,
    min_steps: Annotated[int | None, typer.Option(help="Raise the epochs on small data sets to reach this many steps (default: the preset's).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    batch_size: o.BatchSize = None,
    lr: o.Lr = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.")] = None,
    schedule: Annotated[str | None, typer.Option(help="cosine (warmup + cosine) | plateau (the paper's: halve on val plateau).")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear warmup steps (default 5% of the run).")] = None,
    grad_clip: Annotated[float | None, typer.Option(help="Max gradient norm (0: off).")] = None,
    image_size: o.ImageSize = None,
    window: o.Window = None,
    slices: o.Slices = None,
    tau: Annotated[float | None, typer.Option(help="Temperature (default: the preset's, 0.1).")] = None,
    lam: Annotated[float | None, typer.Option(help="Weight of the image->text loss (default 0.75).")] = None,
    seed: o.Seed = None,
    num_workers: o.NumWorkers = None,
    device: o.Device = None,
    image_col: o.ImageCol = None,
    text_col: o.TextCol = None,
    sections: o.Sections = None,
    text_view: Annotated[str | None, typer.Option(help="sentence (the paper's: one random report sentence per step) | span (a random run of at least half the sentences) | report (the whole text). Default: the preset's.")] = None,
    split_col: o.SplitCol = None,
    patient_col: o.PatientCol = None,
    val_fraction: o.ValFraction = None,
    strict: o.Strict = None,
    where: o.Where = None,
    join: o.Join = None,
    encoding: o.Encoding = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (0: each epoch).")] = None,
    accum_steps: Annotated[int | None, typer.Option(help="Contrastive batch of K x --batch-size pairs on the memory of one (GradCache: same loss and gradients as the whole batch at once).")] = None,
    grad_checkpointing: Annotated[bool | None, typer.Option("--grad-checkpointing/--no-grad-checkpointing", help="Recompute activations in the backward pass: less memory, ~30% more compute.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (with loss scaling).")] = None,
    channels_last: Annotated[bool | None, typer.Option("--channels-last/--no-channels-last", help="NHWC memory layout for CNN towers (faster convolutions on GPUs).")] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the trained module (slow first steps, faster later ones).")] = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Pretrain an image encoder: ConVIRT on image-report pairs (default), RAD-DINO's DINOv2 or SimCLR on images.

    Unset settings come from convirt.toml, CONVIRT_* variables, then the preset's own recipe (`convirt models`).
    Ctrl-C or SIGTERM saves a checkpoint and prints the command that resumes it."""
    from transformers.utils import logging as hf_logging

    from convirt_cli.cli.progress import RichReporter
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torch.train.loop import pretrain as run_pretrain
    from convirt_cli.torchfree.config import PretrainConfig

    hf_logging.disable_progress_bar()  # save_pretrained's shard bars would clutter ours
    cfg = resolve(
        PretrainConfig, data=data, objective=objective, model=model, pretrained=pretrained,
        image_weights=image_weights, text_weights=text_weights, image_init=image_init, out=out, name=name,
        resume=resume, wait=wait, dry_run=dry_run, epochs=epochs, min_steps=min_steps, max_steps=max_steps,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule, warmup_steps=warmup_steps,
        grad_clip=grad_clip, image_size=image_size, window=window, slices=slices, tau=tau, lam=lam, seed=seed,
        num_workers=num_workers, device=device, image_col=image_col, text_col=text_col, sections=sections,
        text_view=text_view, split_col=split_col, patient_col=patient_col, val_fraction=val_fraction,
        strict=strict, where=where, join=join, encoding=encoding, checkpoint_every=checkpoint_every,
        accum_steps=accum_steps, grad_checkpointing=grad_checkpointing, precision=precision,
        channels_last=channels_last, compile=compile, runs_dir=runs_dir)
    run_pretrain(cfg, RichReporter())
