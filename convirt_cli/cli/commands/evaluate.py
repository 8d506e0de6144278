"""`convirt evaluate retrieval DATA --label-col L`: ConVIRT's zero-shot retrieval protocol (Precision@k);
`convirt evaluate grounding DATA --mask-col M | --box-cols x,y,w,h`: phrase grounding (MS-CXR's CNR, mIoU, pointing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o

app = typer.Typer(no_args_is_help=True, help="Zero-shot evaluation of a trained model.")


def _tables(report: dict):
    from rich.table import Table

    ks = [f"P@{k}" for k in report["ks"]]
    for task in ("image_to_image", "text_to_image"):
        if task not in report:
            continue
        r = report[task]
        t = Table(title=f"{task.replace('_', ' ')}: Precision@k ({report['candidates']} candidates)")
        for col in ["class", "queries", *ks]:
            t.add_column(col)
        for c, vals in r["per_class"].items():
            t.add_row(c, str(r["queries"][c]), *(f"{vals[k]:.3f}" for k in ks))
        t.add_row("[bold]mean", str(sum(r["queries"].values())), *(f"[bold]{r['mean'][k]:.3f}" for k in ks))
        yield t


@app.command("retrieval")
def retrieval(
    data: Annotated[Path, typer.Argument(help="Labelled data folder or table (as pretrain reads).")],
    label_col: o.LabelCol = None,
    text_col: Annotated[str | None, typer.Option(help="Column whose texts (of the query rows) are the text queries.")] = None,
    prompts: o.Prompts = None,
    queries_per_class: Annotated[int | None, typer.Option(help="Query images per class (classes need twice as many).")] = None,
    k: Annotated[list[int] | None, typer.Option("-k", "--k", help="Precision@k cut-offs (repeatable; default 5 10 50).")] = None,
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
    seed: o.Seed = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Image->image and text->image retrieval, correct = same label: Precision@k per class and mean."""
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import EvaluateRetrievalConfig

    _run(resolve(EvaluateRetrievalConfig, data=data, label_col=label_col, text_col=text_col, prompts=prompts,
                 queries_per_class=queries_per_class, k=k, ignore_label=ignore_label, where=where, join=join,
                 image_col=image_col, model=model, backend=backend, device=device, batch_size=batch_size,
                 threads=threads, workers=workers, format=format, out=out, seed=seed, runs_dir=runs_dir))


def _run(cfg) -> None:
    from convirt_cli.cli.output import check_report_out, report_inputs, write_report
    from convirt_cli.cli.progress import note, progress_bar
    from convirt_cli.torchfree.evaluate.labelled import load_labelled, load_prompts
    from convirt_cli.torchfree.evaluate.zeroshot import evaluate_retrieval
    from convirt_cli.torchfree.serve.backends import open_encoder

    check_report_out(cfg)
    paths, labels, texts = load_labelled(cfg.data, cfg.image_col, cfg.label_col, cfg.ignore_label, cfg.text_col,
                                         cfg.where, cfg.join, progress=progress_bar, note=note)
    encoder = open_encoder(cfg.model, cfg.backend, cfg.device, cfg.runs_dir, cfg.threads, note=note,
                           workers=cfg.workers)
    with progress_bar(f"encode ({encoder.backend})", len(paths), "images") as advance:
        report = evaluate_retrieval(encoder, paths, labels, texts, load_prompts(cfg.prompts), cfg.queries_per_class,
                                    cfg.k, cfg.seed, cfg.batch_size, advance)
    report |= {"model": str(encoder.path), "fingerprint": encoder.fingerprint, "data": str(cfg.data),
               "label_col": cfg.label_col}
    write_report(report, cfg.format, cfg.out, _tables, inputs=report_inputs(cfg))


def _grounding_tables(report: dict):
    from rich.table import Table

    t = Table(title=f"phrase grounding (sigma {report['sigma']}; skipped: {report['skipped'] or 'none'})")
    for col in ("finding", "n", "CNR", "mIoU", "pointing game"):
        t.add_column(col)

    def cell(m: dict) -> str:
        return f"{m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"

    for name, r in [*report["per_finding"].items(), ("[bold]all", report)]:
        t.add_row(name, str(r["count"]), cell(r["cnr"]), cell(r["miou"]), cell(r["pointing_game"]))
    yield t


@app.command("grounding")
def grounding(
    data: Annotated[Path, typer.Argument(help="Table of image, phrase and region rows (MS-CXR's layout as is).")],
    text_col: Annotated[str | None, typer.Option(help="Column holding each row's phrase (MS-CXR: label_text).")] = None,
    mask_col: Annotated[str | None, typer.Option(help="Column holding a mask image per row (relative to the table).")] = None,
    box_cols: Annotated[str | None, typer.Option(help="Four columns x,y,w,h of a box in the image's pixels (MS-CXR: x,y,w,h); rows of one image and phrase are one region.")] = None,
    finding_col: Annotated[str | None, typer.Option(help="Column to group results by (default: category when present, else the phrase).")] = None,
    sigma: Annotated[float | None, typer.Option(help="Gaussian smoothing of the map, in cells (BioViL: 1.5).")] = None,
    bootstrap: Annotated[int | None, typer.Option(help="Bootstrap resamples for the 95% intervals (0: none).")] = None,
    image_col: o.ImageCol = None,
    model: o.ServeModel = None,
    backend: o.Backend = None,
    device: o.Device = None,
    batch_size: o.BatchSize = None,
    threads: o.Threads = None,
    format: o.ReportFormat = None,
    out: o.ReportOut = None,
    seed: o.Seed = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Similarity maps of each row's phrase over its image against its mask or box: CNR, mIoU, pointing game."""
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import EvaluateGroundingConfig

    cfg = resolve(EvaluateGroundingConfig, data=data, text_col=text_col, mask_col=mask_col, box_cols=box_cols,
                  finding_col=finding_col, sigma=sigma, bootstrap=bootstrap, image_col=image_col, model=model,
                  backend=backend, device=device, batch_size=batch_size, threads=threads, format=format, out=out,
                  seed=seed, runs_dir=runs_dir)
    from convirt_cli.cli.output import write_report
    from convirt_cli.cli.progress import note, progress_bar
    from convirt_cli.torchfree.evaluate.regions import evaluate_grounding, load_targets
    from convirt_cli.torchfree.serve.backends import open_encoder

    if cfg.out is not None:  # checked before the work: not a folder, not the data
        from convirt_cli.torchfree.outputs import check_file

        check_file(cfg.out, inputs=[cfg.data])
    targets, skips = load_targets(cfg, note)
    encoder = open_encoder(cfg.model, cfg.backend, cfg.device, cfg.runs_dir, cfg.threads, note=note)
    with progress_bar(f"ground ({encoder.backend})", len({t.image for t in targets}), "images") as advance:
        report = evaluate_grounding(encoder, targets, cfg.sigma, cfg.bootstrap, cfg.seed, cfg.batch_size, note,
                                    advance, skips)
    report |= {"model": str(encoder.path), "fingerprint": encoder.fingerprint, "data": str(cfg.data)}
    write_report(report, cfg.format, cfg.out, _grounding_tables, inputs=[cfg.data])
