"""`convirt finetune DATA`: flags -> FinetuneConfig -> train.finetune.finetune, drawn with rich."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o


def _fmt(x: float | None) -> str:
    import math

    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


class RichReporter:
    """Data summary, one bar over the (init, fraction, seed) runs, a line per run, the final table."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.progress = None

    def reading(self, label, total, unit):
        from convirt_cli.cli.progress import progress_bar

        return progress_bar(label, total, unit)

    def data_summary(self, s):
        reasons = ", ".join(f"{n} {r}" for r, n in s["skip_reasons"].items()) or "none"
        sp = s["splits"]
        self.console.print(f"[bold]rows[/] found {s['found']}, usable {s['usable']}, skipped {s['skipped']} "
                           f"({reasons}); split {s.get('split_by', '')}: train {sp['train']} / val {sp['val']} / "
                           f"test {sp['test']}")
        for source, reason in s["skipped_examples"]:
            self.console.print(f"  [yellow]skip[/] {source}: {reason}")
        if s.get("image_kinds"):
            self.console.print(f"[bold]images[/] {s['image_kinds']} (--where COL=V,... keeps some)", highlight=False)
        names = s["labels"]
        shown = ", ".join(names[:8]) + (f" ... ({len(names)} in all)" if len(names) > 8 else "")
        self.console.print(f"[bold]task[/] {s['task']} on {', '.join(s['columns'])}: {shown}")
        if s.get("dry_run"):
            self.console.print("dry run: nothing written; drop --dry-run to run")

    def warn(self, message):
        self.console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    def start(self, total_runs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]finetune"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[what]}"), TimeElapsedColumn(), console=self.console)
        self.task = self.progress.add_task("runs", total=total_runs, what="")
        self.progress.start()

    def run_start(self, init, fraction, seed, n_train):
        self.progress.update(self.task, what=f"{init} {fraction:g} seed {seed} ({n_train} labelled)")

    def epoch(self, r):
        self.progress.update(self.task, what=f"epoch {r['epoch']} loss {r['train_loss']:.4f} val {_fmt(r['val'])}")

    def run_end(self, r):
        split = "test" if "test" in r else "val"
        metrics = "  ".join(f"{k} {_fmt(v)}" for k, v in r[split].items() if "/" not in k)
        self.progress.console.print(f"{r['init']} fraction {r['fraction']:g} seed {r['seed']} "
                                    f"(n={r['n_train']}): {split} {metrics}")
        self.progress.advance(self.task)

    def end(self, out, table):
        from rich.table import Table

        if self.progress is not None:
            self.progress.stop()
        t = Table(title=f"{table['split']} {table['metric']} ({table['mode']}), mean ± sd over seeds")
        t.add_column("init")
        from convirt_cli.torch.train.finetune import used_label

        for f in table["fractions"]:
            t.add_column(f"{used_label(f, table.get('used'))} labels", justify="right")
        for row in table["rows"]:
            cells = [row["cells"].get(str(f)) for f in table["fractions"]]
            t.add_row(row["init"], *[f"{c['mean']:.3f} ± {c['sd']:.3f}" if c else "-" for c in cells])
        self.console.print(t)
        self.console.print(f"[green]done[/]: table, plot and classifiers in [bold]{out}[/]")


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
    window: o.Window = None,
    metric: Annotated[str | None, typer.Option(help="Table/plot/early-stopping metric (default macro_auc | auc | r2).")] = None,
    bootstrap: Annotated[int | None, typer.Option(help="Bootstrap resamples for the test 95% intervals (0: off).")] = None,
    out: o.Out = None,
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
    flags = dict(locals())
    from transformers.utils import logging as hf_logging

    from convirt_cli.cli.settings import resolve
    from convirt_cli.torch.train.finetune import finetune as run_finetune
    from convirt_cli.torchfree.config import FinetuneConfig
    from convirt_cli.torchfree.errors import ConvirtError

    one, several = flags.pop("label"), flags.pop("labels")
    if one is not None and several is not None:
        raise ConvirtError("pass --label COL or --labels A,B, not both")
    flags["labels"] = several if several is not None else one
    hf_logging.disable_progress_bar()  # save_pretrained's shard bars would clutter ours
    cfg = resolve(FinetuneConfig, **flags)
    run_finetune(cfg, RichReporter())
