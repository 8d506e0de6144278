"""`convirt evaluate retrieval DATA --label-col L`: ConVIRT's zero-shot retrieval protocol (Precision@k)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o

app = typer.Typer(no_args_is_help=True, help="Zero-shot evaluation of a trained model.")


def load_labelled(data: Path, image_col: str, label_col: str, ignore: list[str], text_col: str | None = None,
                  where: list[str] = (), join: list[Path] = ()):
    """Rows with a label not in `ignore` (and kept by --where) -> (paths, labels, texts or None)."""
    from convirt_cli.cli.progress import note, progress_bar
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.data.validate import select_rows
    from convirt_cli.torchfree.errors import ConvirtError
    from convirt_cli.torchfree.processes import cpu_workers

    rows = read_rows(data, image_col=image_col, text_col=None, workers=cpu_workers(), progress=progress_bar,
                     join=join, warn=lambda line: note(f"warning: {line}"))
    if rows and label_col not in rows[0].columns:
        raise ConvirtError(f"{data}: no column '{label_col}' (columns: {', '.join(rows[0].columns)}); pass --label-col")
    has_text = bool(rows and text_col and (text_col in rows[0].columns or all(
        c.strip() in rows[0].columns for c in text_col.split(","))))
    if has_text:  # the texts as pretrain reads them (report files, joined columns), onto the same rows in order
        for row, again in zip(rows, read_rows(data, image_col=image_col, text_col=text_col, metadata=False)):
            row.text, row.text_problem = again.text, again.text_problem
    rows, left = select_rows(rows, where)
    if left:
        from collections import Counter

        note(f"--where left out {len(left)} rows: " + ", ".join(f"{n} {r.removeprefix('--where ')}"
                                                             for r, n in Counter(r for _, r in left).items()))
    rows = [r for r in rows if r.columns.get(label_col, "").strip() not in ignore]
    first = {}
    for r in rows:  # an image listed twice (once per box or reader) would be its own best match
        first.setdefault(r.image, r)
    if len(first) < len(rows):
        note(f"{len(rows) - len(first)} rows name an image an earlier row names: each image is scored once, with "
             "its first row's label")
        rows = list(first.values())
    if not rows:
        raise ConvirtError(f"{data}: no rows with a label in '{label_col}'")
    return ([str(r.image) for r in rows], [r.columns[label_col].strip() for r in rows],
            [r.text for r in rows] if has_text else None)


def load_prompts(path: Path | None) -> dict[str, list[str]] | None:
    from convirt_cli.torchfree.errors import ConvirtError

    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConvirtError(f"--prompts {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConvirtError(f'--prompts {path}: expected {{"label": ["text", ...]}}')
    return {str(k): [v] if isinstance(v, str) else list(v) for k, v in data.items()}


def emit(report: dict, fmt: str, out: Path | None, table) -> None:
    """JSON to --out (atomic) and to stdout with --format json; otherwise rich table(s) on stdout."""
    text = json.dumps(report, indent=2) + "\n"
    if out:
        from convirt_cli.torchfree.files import atomic_write_text

        atomic_write_text(out, text)
    if fmt == "json":
        sys.stdout.write(text)
    else:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            console.width = 160
        for t in table(report):
            console.print(t)


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
    format: o.ReportFormat = None,
    out: o.ReportOut = None,
    seed: o.Seed = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Image->image and text->image retrieval, correct = same label: Precision@k per class and mean."""
    flags = dict(locals())
    from convirt_cli.cli.progress import note, progress_bar
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import EvaluateRetrievalConfig
    from convirt_cli.torchfree.evaluate.zeroshot import evaluate_retrieval
    from convirt_cli.torchfree.serve.backends import open_encoder

    cfg = resolve(EvaluateRetrievalConfig, **flags)
    paths, labels, texts = load_labelled(cfg.data, cfg.image_col, cfg.label_col, cfg.ignore_label, cfg.text_col,
                                         cfg.where, cfg.join)
    encoder = open_encoder(cfg.model, cfg.backend, cfg.device, cfg.runs_dir, cfg.threads, note=note)
    with progress_bar(f"encode ({encoder.backend})", len(paths), "images") as advance:
        report = evaluate_retrieval(encoder, paths, labels, texts, load_prompts(cfg.prompts), cfg.queries_per_class,
                                    cfg.k, cfg.seed, cfg.batch_size, advance)
    report |= {"model": str(encoder.path), "fingerprint": encoder.fingerprint, "data": str(cfg.data),
               "label_col": cfg.label_col}
    emit(report, cfg.format, cfg.out, _tables)
