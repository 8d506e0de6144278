"""What a sweep writes: test metrics with bootstrap intervals, the table (init x label fraction, mean +- sd over
seeds) as JSON and CSV, results.json, each classifier's test predictions, and the data-efficiency plot."""

from __future__ import annotations

import csv
import io
import math
import re
import time
from pathlib import Path

import numpy as np

from convirt_cli.torchfree.config import FinetuneConfig
from convirt_cli.torchfree.data.readers import TABLE_NAMES, Row
from convirt_cli.torchfree.evaluate.metrics import bootstrap_ci, task_metrics
from convirt_cli.torchfree.files import atomic_write_text, write_json
from convirt_cli.torchfree.serve.formats import spreadsheet_safe


def test_report(task: str, y: np.ndarray, scores: np.ndarray, names: list[str], n_boot: int, seed: int) -> dict:
    """Test metrics and their percentile-bootstrap 95% intervals (resampling test rows)."""
    metrics = task_metrics(task, y, scores, names)
    ci = bootstrap_ci(lambda i: task_metrics(task, y[i], scores[i], names), len(y), n_boot, seed) if n_boot else {}
    return {"metrics": metrics, "ci95": ci}


def results_table(records: list[dict], metric: str, split: str) -> dict:
    """Rows init, columns label fraction, cells mean and sd over seeds (sample sd, 0 for one seed)."""
    inits = list(dict.fromkeys(r["init"] for r in records))
    fractions = sorted({r["fraction"] for r in records})
    rows = []
    for init in inits:
        cells = {}
        for f in fractions:
            vals = [r[split].get(metric, float("nan")) for r in records if r["init"] == init and r["fraction"] == f]
            vals = [v for v in vals if v is not None and not math.isnan(v)]
            if vals:
                cells[str(f)] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                                 "n": len(vals), "values": vals}
        rows.append({"init": init, "cells": cells})
    return {"metric": metric, "split": split, "fractions": fractions, "rows": rows}


def labels_used(fractions: list[float], seeds: int, subsets: dict, n_train: int) -> dict[str, dict]:
    """Per requested fraction: the training rows actually used (over seeds) and whether keeping every class
    raised it above ceil(fraction x rows)."""
    out = {}
    for f in fractions:
        ns = [len(subsets[(f, s)]) for s in range(seeds)]
        out[str(f)] = {"n_min": min(ns), "n_max": max(ns), "fraction_min": min(ns) / n_train,
                       "fraction_max": max(ns) / n_train, "raised": min(ns) > math.ceil(f * n_train)}
    return out


def used_label(fraction: float, used: dict | None) -> str:
    """A table column: the fraction asked for, and the rows it came to ("1% (6 rows = 10.9%)" when raised)."""
    u = (used or {}).get(str(fraction))
    if u is None:
        return f"{fraction * 100:g}%"
    n = f"{u['n_min']}" if u["n_min"] == u["n_max"] else f"{u['n_min']}-{u['n_max']}"
    return f"{fraction * 100:g}% ({n} rows = {u['fraction_min']:.1%})" if u["raised"] else f"{fraction * 100:g}% ({n} rows)"


def table_csv(table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["init"] + [f"{f:g} {stat}" for f in table["fractions"] for stat in ("mean", "sd", "n", "rows")])
    used = table.get("used", {})
    for row in table["rows"]:
        cells = []
        for f in table["fractions"]:
            c = row["cells"].get(str(f))
            rows = used.get(str(f), {}).get("n_min", "")
            cells += [f"{c['mean']:.4f}", f"{c['sd']:.4f}", c["n"], rows] if c else ["", "", 0, rows]
        w.writerow([spreadsheet_safe(row["init"])] + cells)
    return buf.getvalue()


def run_name(init: str, fraction: float, seed: int) -> str:
    """The file-safe name of one (init, fraction, seed) run: its classifier's folder and predictions file."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", f"{init}_f{fraction:g}_s{seed}").strip("-")


def write_predictions(path: Path, rows: list[Row], split: str, scores: np.ndarray, names: list[str]) -> None:
    """One line per evaluated row (named by its source, `table.csv:12` or the file in a folder, never a patient
    field): the classifier's probabilities per class / label, or its value (regression)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = names if scores.ndim == 2 else names[:1]
    w.writerow(["row", "split", *cols])
    for r, s in zip(rows, scores.reshape(len(rows), -1)):
        w.writerow([r.source, split, *(f"{v:.8g}" for v in s)])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())


def read_predictions(path: Path) -> tuple[list[str], np.ndarray]:
    """predictions/<run>.csv -> (row sources, scores [N, K])."""
    with Path(path).open(newline="") as f:
        lines = list(csv.reader(f))[1:]
    return [x[0] for x in lines], np.asarray([[float(v) for v in x[2:]] for x in lines], np.float32)


def data_name(data: Path) -> str:
    """`pneumoniamnist`, not `manifest.csv`: a table named like the loaders' defaults says little."""
    return data.resolve().parent.name if data.is_file() and data.name in TABLE_NAMES else data.name


def out_dir(cfg: FinetuneConfig) -> Path:
    if cfg.out is not None:
        return cfg.out
    return cfg.runs_dir / (cfg.name or f"finetune-{cfg.mode}-{time.strftime('%Y%m%d-%H%M%S')}")


def write_results(out: Path, summary: dict, records: list[dict], metric: str, split: str, task: str, mode: str,
                  used: dict, plot_title: str | None) -> dict:
    """The sweep's end: table.json, table.csv, results.json (with the table), the plot unless plot_title is None."""
    table = results_table(records, metric, split)
    table["task"], table["mode"], table["used"] = task, mode, used
    write_json(out / "table.json", table)
    atomic_write_text(out / "table.csv", table_csv(table))
    write_json(out / "results.json", {"summary": summary, "metric": metric, "records": records, "table": table})
    if plot_title is not None:
        from convirt_cli.torchfree.plots import data_efficiency

        data_efficiency(table, out / "data_efficiency.png", title=plot_title)
    return table
