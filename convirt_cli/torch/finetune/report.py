"""What a sweep says to a person, as plain text for the library's Reporter (torchfree/report.py; the CLI draws
it): the data read, a status per run and epoch, a line per finished run, the data-efficiency table."""

from __future__ import annotations

import math

from convirt_cli.torch.finetune.results import used_label
from convirt_cli.torchfree.report import Reporter, data_lines


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def describe_data(rep: Reporter, summary: dict, dry_run: bool) -> None:
    """Rows read / skipped / split, then the task and its labels."""
    for line in data_lines(summary, "rows"):
        rep.note(line)
    names = summary["labels"]
    shown = ", ".join(names[:8]) + (f" ... ({len(names)} in all)" if len(names) > 8 else "")
    rep.note(f"task {summary['task']} on {', '.join(summary['columns'])}: {shown}")
    if dry_run:
        rep.note("dry run: nothing written; drop --dry-run to run")


def run_status(init: str, fraction: float, seed: int, n_train: int) -> str:
    return f"{init} {fraction:g} seed {seed} ({n_train} labelled)"


def epoch_status(r: dict) -> str:
    return f"epoch {r['epoch']} loss {r['train_loss']:.4f} val {_fmt(r['val'])}"


def run_line(r: dict) -> str:
    """One line per (init, fraction, seed) run: its evaluation metrics (per-label ones left to results.json)."""
    split = "test" if "test" in r else "val"
    metrics = "  ".join(f"{k} {_fmt(v)}" for k, v in r[split].items() if "/" not in k)
    return f"{r['init']} fraction {r['fraction']:g} seed {r['seed']} (n={r['n_train']}): {split} {metrics}"


def table_view(table: dict) -> tuple[str, list[str], list[list[str]]]:
    """(title, columns, rows) of the data-efficiency table: init x label fraction, mean ± sd."""
    title = f"{table['split']} {table['metric']} ({table['mode']}), mean ± sd over seeds"
    columns = ["init"] + [f"{used_label(f, table.get('used'))} labels" for f in table["fractions"]]
    rows = []
    for row in table["rows"]:
        cells = [row["cells"].get(str(f)) for f in table["fractions"]]
        rows.append([row["init"], *[f"{c['mean']:.3f} ± {c['sd']:.3f}" if c else "-" for c in cells]])
    return title, columns, rows


def finish(rep: Reporter, out, table: dict) -> None:
    rep.table(*table_view(table))
    rep.end(f"done: table, plot and classifiers in {out}")
