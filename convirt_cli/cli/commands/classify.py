"""`convirt classify DATA --label-col L`: zero-shot classification by one text prompt per class."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o


def _tables(report: dict):
    from rich.table import Table

    t = Table(title=f"zero-shot classification: accuracy {report['accuracy']:.3f}, macro AUC {report['macro_auc']:.3f} "
                    f"({report['images']} images)")
    for col in ("class", "n", "AUC", "recall", "prompt"):
        t.add_column(col)
    for c, v in report["per_class"].items():
        t.add_row(c, str(v["n"]), f"{v['auc']:.3f}", f"{v['recall']:.3f}", " | ".join(report["prompts"][c])[:80])
    yield t


def classify(
    data: Annotated[Path, typer.Argument(help="Labelled data folder or table (as pretrain reads).")],
    label_col: o.LabelCol = None,
    template: Annotated[str | None, typer.Option(help='Prompt per class, {label} replaced (default "{label}").')] = None,
    prompts: o.Prompts = None,
    ignore_label: o.IgnoreLabel = None,
    where: o.Where = None,
    join: o.Join = None,
    image_col: o.ImageCol = None,
    model: o.ServeModel = None,
    backend: o.Backend = None,
    device: o.Device = None,
    batch_size: o.BatchSize = None,
    threads: o.Threads = None,
    workers: o.Workers = None,
    format: o.ReportFormat = None,
    out: o.ReportOut = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Label each image with the class whose prompt embedding is nearest; report accuracy and one-vs-rest AUC."""
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import ClassifyConfig

    _run(resolve(ClassifyConfig, data=data, label_col=label_col, template=template, prompts=prompts,
                 ignore_label=ignore_label, where=where, join=join, image_col=image_col, model=model, backend=backend,
                 device=device, batch_size=batch_size, threads=threads, workers=workers, format=format, out=out, runs_dir=runs_dir))


def _run(cfg) -> None:
    from convirt_cli.cli.output import check_report_out, report_inputs, write_report
    from convirt_cli.cli.progress import note, progress_bar
    from convirt_cli.torchfree.evaluate.labelled import load_labelled, load_prompts
    from convirt_cli.torchfree.evaluate.zeroshot import classify as run_classify
    from convirt_cli.torchfree.serve.backends import open_encoder

    check_report_out(cfg)
    paths, labels, _ = load_labelled(cfg.data, cfg.image_col, cfg.label_col, cfg.ignore_label, where=cfg.where,
                                     join=cfg.join, progress=progress_bar, note=note)
    given = load_prompts(cfg.prompts)
    prompt_map = given or {c: [cfg.template.replace("{label}", c)] for c in sorted(set(labels))}
    encoder = open_encoder(cfg.model, cfg.backend, cfg.device, cfg.runs_dir, cfg.threads, note=note,
                           workers=cfg.workers)
    with progress_bar(f"encode ({encoder.backend})", len(paths), "images") as advance:
        report = run_classify(encoder, paths, labels, prompt_map, cfg.batch_size, advance)
    report |= {"model": str(encoder.path), "fingerprint": encoder.fingerprint, "data": str(cfg.data),
               "label_col": cfg.label_col}
    write_report(report, cfg.format, cfg.out, _tables, inputs=report_inputs(cfg))
