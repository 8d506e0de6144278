"""Fine-tuning and the data-efficiency sweep (ConVIRT sec. 4, Table 1): inits x label fractions x seeds.

rows -> labels (NaN = missing) -> split (column or patient-level) -> images decoded once (uint8) ->
for each init: [linear] features once, one L-BFGS head per (fraction, seed);
               [full] tower + head trained with the paper's augmentations, early-stopped on val ->
test metrics with bootstrap 95% intervals -> table (init x fraction, mean +- sd) + plot + classifiers.

The same (fraction, seed) picks the same training rows for every init, so inits compare like for like.
The sweep reports through a `Reporter` (torchfree/report.py; the CLI draws it); the library prints nothing.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convirt_cli.torch.classifier import (
    ImageClassifier,
    fold_target_scale,
    head_loss,
    save_classifier,
    scores_from_logits,
)
from convirt_cli.torch.data.transforms import augment, to_model_input
from convirt_cli.torch.probe import extract_features, fit_linear_probe
from convirt_cli.torch.towers import ImageTower
from convirt_cli.torch.train.device import autocast, pick_device
from convirt_cli.torch.train.schedule import warmup_cosine
from convirt_cli.torchfree.config import FinetuneConfig
from convirt_cli.torchfree.data.readers import TABLE_NAMES, Row, find_table, read_rows
from convirt_cli.torchfree.data.split import describe_split, split_rows
from convirt_cli.torchfree.data.validate import image_kinds, reason_kind, validate_rows
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.evaluate.labels import Labels, check_train_classes, parse_labels, sample_fraction
from convirt_cli.torchfree.evaluate.metrics import METRICS, PRIMARY, bootstrap_ci, is_better, task_metrics
from convirt_cli.torchfree.files import atomic_write_text, write_json
from convirt_cli.torchfree.imageio import load_gray
from convirt_cli.torchfree.processes import cpu_workers
from convirt_cli.torchfree.registry import ImageTowerConfig, get_model_config
from convirt_cli.torchfree.report import NullReporter, Reporter, data_lines
from convirt_cli.torchfree.runs import is_run_dir, latest_run

# ---------------------------------------------------------------- inits

def init_label(spec: str, model: str, pretrained: bool) -> str:
    """Row name in the table: `random(tiny)`, the run folder's name, or the preset (+ `pretrained`)."""
    if spec == "random":
        return f"random({get_model_config(model).name})"
    if is_run_dir(Path(spec)):
        return Path(spec).resolve().name
    return f"{Path(spec).stem}{'+pretrained' if pretrained else ''}"


def resolve_init(spec: str, runs_dir: Path) -> str:
    if spec == "latest":
        run = latest_run(runs_dir)
        if run is None:
            raise ConvirtError(f"--init latest: no finished run in {runs_dir}/; pass a run directory")
        return str(run)
    return spec


def random_model(cfg: FinetuneConfig, specs: list[str]) -> str:
    """What `random` builds: --model when the user set it, else the first run's own architecture (the fair
    baseline: the same tower untrained, at the same size), else the default preset."""
    if cfg.sources().get("model", "default") != "default":
        return cfg.model
    return next((s for s in specs if is_run_dir(Path(s))), cfg.model)


def init_image_config(spec: str, model: str, image_size: int | None) -> ImageTowerConfig:
    """The image tower config an init builds (a run's model.json image section, or the preset's)."""
    cfg = get_model_config(model if spec == "random" else spec).image
    return cfg.model_copy(update={"image_size": image_size}) if image_size else cfg


def build_tower(spec: str, model: str, pretrained: bool, image_size: int | None, seed: int) -> ImageTower:
    """A run (any pretraining objective): its image tower only; a preset: fresh (or hub) weights."""
    cfg = init_image_config(spec, model, image_size)
    torch.manual_seed(seed)  # `random` inits are reproducible
    if is_run_dir(Path(spec)):
        if not (Path(spec) / "image").exists():
            raise ConvirtError(f"{spec}: run has no image/ tower yet; let `convirt pretrain` finish first")
        return ImageTower(cfg, local_dir=Path(spec) / "image")
    return ImageTower(cfg, pretrained=pretrained and spec != "random")


# ---------------------------------------------------------------- data

def decode_images(rows: list[Row], size: int, workers: int = 2, window: str = "auto") -> tuple[np.ndarray, list[int]]:
    """rows -> (uint8 [N, 1, S, S], indices of rows that failed to decode; their slots stay zero)."""
    out = np.zeros((len(rows), 1, size, size), np.uint8)
    bad: list[int] = []

    def one(i: int) -> None:
        try:
            out[i, 0] = load_gray(rows[i].image, size, window, rows[i].slice)
        except Exception:  # noqa: BLE001 - any decode failure means a skipped, counted image
            bad.append(i)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, range(len(rows))))
    return out, sorted(bad)


def prepare_data(cfg: FinetuneConfig, rep: Reporter) -> tuple[list[Row], Labels, dict[str, np.ndarray], dict]:
    """Read, label, validate and split rows. Returns usable rows, their labels, split -> indices, summary."""
    rows = read_rows(cfg.data, cfg.image_col, None, cfg.encoding, workers=cpu_workers(), progress=rep.reading,
                     join=cfg.join, warn=rep.warn)
    labels = parse_labels(rows, cfg.labels, cfg.task, cfg.missing)  # bad columns fail before any decoding
    checked = validate_rows(rows, need_text=False, strict=cfg.strict, where=cfg.where, progress=rep.reading)
    skipped: list[tuple[str, str]] = [(r.source, reason) for r, reason in checked.skipped]
    keep = {id(r) for r in checked.usable}
    idx = [i for i, r in enumerate(rows) if id(r) in keep]
    has = labels.has_label()
    unlabelled = [i for i in idx if not has[i]]
    skipped += [(rows[i].source, "no label") for i in unlabelled]
    idx, duplicates = one_row_per_image(rows, labels.y, [i for i in idx if has[i]])
    skipped += duplicates
    rows, labels = [rows[i] for i in idx], labels.subset(np.asarray(idx, dtype=np.int64))
    split = split_rows(rows, cfg.val_fraction, cfg.test_fraction, cfg.split_col, cfg.patient_col, cfg.seed)
    pos = {id(r): i for i, r in enumerate(rows)}
    splits = {k: np.asarray([pos[id(r)] for r in v], dtype=np.int64) for k, v in split.items()}
    if len(splits["train"]) == 0:
        raise ConvirtError(f"no labelled training rows after the split ({len(rows)} usable); check --split-col")
    check_train_classes(labels.subset(splits["train"]), [rows[i] for i in splits["train"]])
    summary = {"found": checked.found, "usable": len(rows), "skipped": len(skipped),
               "skip_reasons": _count(reason_kind(reason) for _, reason in skipped), "skipped_examples": skipped[:5],
               "splits": {k: len(v) for k, v in splits.items()}, "task": labels.task,
               "labels": labels.names, "columns": labels.columns,
               "split_by": describe_split(rows, cfg.split_col, cfg.patient_col), "image_kinds": image_kinds(rows)}
    return rows, labels, splits, summary


def one_row_per_image(rows: list[Row], y: np.ndarray, idx: list[int]) -> tuple[list[int], list[tuple[str, str]]]:
    """idx without the rows that name an image an earlier row names, and (source, why) for each of those. Tables list
    an image once per box (RSNA Pneumonia) or per reader (VinDr-CXR): a repeat would count twice in the test metrics
    and, split by image, could sit in train and test at once. The first row's labels stay; a repeat whose labels
    differ says so."""
    first: dict[tuple[Path, int | None], int] = {}
    kept, dropped = [], []
    for i in idx:
        j = first.setdefault((rows[i].image, rows[i].slice), i)
        if j == i:
            kept.append(i)
        else:
            other = "" if np.array_equal(y[i], y[j], equal_nan=True) else " with other labels"
            dropped.append((rows[i].source, f"duplicate image{other} (of {rows[j].source})"))
    return kept, dropped


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it] = out.get(it, 0) + 1
    return out


# ---------------------------------------------------------------- training

@torch.no_grad()
def predict(model: ImageClassifier, images: np.ndarray, device: torch.device, batch_size: int = 128) -> np.ndarray:
    """uint8 [N, 1, S, S] -> scores: probabilities [N, K], or values [N] for regression."""
    model.eval().to(device)
    cfg = model.image_cfg
    out = []
    for i in range(0, len(images), batch_size):
        x = to_model_input(torch.from_numpy(images[i:i + batch_size]).to(device), cfg.mean, cfg.std, cfg.in_chans)
        with autocast(device):
            logits = model(x)
        out.append(scores_from_logits(model.task, logits.float()).cpu().numpy())
    scores = np.concatenate(out) if out else np.zeros((0, model.head.out_features), np.float32)
    return scores[:, 0] if model.task == "regression" else scores


def train_full(tower: ImageTower, labels: Labels, images: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
               cfg: FinetuneConfig, seed: int, device: torch.device, metric: str,
               on_epoch: Callable[[dict], None] | None = None) -> tuple[ImageClassifier, dict]:
    """Fine-tune a copy of `tower` with a linear head (AdamW, warmup + cosine, the paper's augmentations).

    Keeps the weights of the epoch with the best validation `metric`; stops after `patience` epochs
    without improvement. Regression trains on standardised targets, folded into the head at the end.
    """
    torch.manual_seed(seed)
    model = ImageClassifier(copy.deepcopy(tower), labels.task, labels.names).to(device)
    y = labels.y.astype(np.float32)
    y_mean, y_std = 0.0, 1.0
    if labels.task == "regression":
        known = y[train_idx][~np.isnan(y[train_idx])]
        y_mean, y_std = float(known.mean()), float(known.std() + 1e-8)
        y = (y - y_mean) / y_std
    bs = min(cfg.batch_size, len(train_idx))
    steps_per_epoch = max(1, len(train_idx) // bs)
    total = cfg.epochs * steps_per_epoch
    warmup = int(0.05 * total)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    icfg = model.image_cfg
    best_state, best_val, best_epoch, bad, step = None, {}, 0, 0, 0
    for epoch in range(cfg.epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed * 7919 + epoch)).numpy()]
        losses = []
        for b in range(steps_per_epoch):  # drop_last: a batch of 1 would break BatchNorm
            idx = np.sort(order[b * bs:(b + 1) * bs])
            for group in opt.param_groups:
                group["lr"] = cfg.lr * warmup_cosine(step, total, warmup)
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            x = augment(torch.from_numpy(images[idx]).to(device), g)
            x = to_model_input(x, icfg.mean, icfg.std, icfg.in_chans)
            with autocast(device):
                logits = model(x)
            loss = head_loss(labels.task, logits.float(), torch.from_numpy(y[idx]).to(device))
            if not math.isfinite(loss.item()):
                raise ConvirtError(f"fine-tuning loss became {loss.item()} at epoch {epoch}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            losses.append(loss.item())
        val: dict[str, float] = {}
        if len(val_idx):
            scores = predict(model, images[val_idx], device)
            if labels.task == "regression":
                scores = scores * y_std + y_mean
            val = task_metrics(labels.task, labels.y[val_idx], scores, labels.names)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val": val.get(metric)}
        if on_epoch:
            on_epoch(record)
        if best_state is None or not val or is_better(metric, val.get(metric, float("nan")),
                                                      best_val.get(metric, float("nan"))):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_val, best_epoch, bad = val, epoch + 1, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    if labels.task == "regression":
        fold_target_scale(model.head, y_mean, y_std)
    return model.eval(), {"best_epoch": best_epoch, "epochs_run": epoch + 1, "val": best_val}


def linear_classifier(tower: ImageTower, labels: Labels, feats: np.ndarray, train_idx: np.ndarray,
                      val_idx: np.ndarray, seed: int) -> tuple[ImageClassifier, dict]:
    """Frozen tower + the L-BFGS head chosen on validation, as an ImageClassifier."""
    res = fit_linear_probe(labels.task, labels.num_outputs, feats[train_idx], labels.y[train_idx],
                           feats[val_idx], labels.y[val_idx], labels.names, seed=seed)
    model = ImageClassifier(tower, labels.task, labels.names)
    with torch.no_grad():
        model.head.weight.copy_(res.weight)
        model.head.bias.copy_(res.bias)
    return model.eval(), {"l2": res.l2, "val": res.val}


def scores_from_features(model: ImageClassifier, feats: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = scores_from_logits(model.task, model.head(torch.from_numpy(feats).float().to(model.head.weight.device)))
    out = out.cpu().numpy()
    return out[:, 0] if model.task == "regression" else out


def test_report(task: str, y: np.ndarray, scores: np.ndarray, names: list[str], n_boot: int, seed: int) -> dict:
    """Test metrics and their percentile-bootstrap 95% intervals (resampling test rows)."""
    metrics = task_metrics(task, y, scores, names)
    ci = bootstrap_ci(lambda i: task_metrics(task, y[i], scores[i], names), len(y), n_boot, seed) if n_boot else {}
    return {"metrics": metrics, "ci95": ci}


# ---------------------------------------------------------------- the sweep

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


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def describe_data(rep: Reporter, summary: dict, dry_run: bool) -> None:
    """The data summary for a person: rows read / skipped / split, then the task and its labels."""
    for line in data_lines(summary, "rows"):
        rep.note(line)
    names = summary["labels"]
    shown = ", ".join(names[:8]) + (f" ... ({len(names)} in all)" if len(names) > 8 else "")
    rep.note(f"task {summary['task']} on {', '.join(summary['columns'])}: {shown}")
    if dry_run:
        rep.note("dry run: nothing written; drop --dry-run to run")


def epoch_status(r: dict) -> str:
    return f"epoch {r['epoch']} loss {r['train_loss']:.4f} val {_fmt(r['val'])}"


def run_line(r: dict) -> str:
    """One line per (init, fraction, seed) run: its evaluation metrics (per-label ones left to results.json)."""
    split = "test" if "test" in r else "val"
    metrics = "  ".join(f"{k} {_fmt(v)}" for k, v in r[split].items() if "/" not in k)
    return f"{r['init']} fraction {r['fraction']:g} seed {r['seed']} (n={r['n_train']}): {split} {metrics}"


def table_view(table: dict) -> tuple[str, list[str], list[list[str]]]:
    """(title, columns, rows) of the data-efficiency table for a person: init x label fraction, mean ± sd."""
    title = f"{table['split']} {table['metric']} ({table['mode']}), mean ± sd over seeds"
    columns = ["init"] + [f"{used_label(f, table.get('used'))} labels" for f in table["fractions"]]
    rows = []
    for row in table["rows"]:
        cells = [row["cells"].get(str(f)) for f in table["fractions"]]
        rows.append([row["init"], *[f"{c['mean']:.3f} ± {c['sd']:.3f}" if c else "-" for c in cells]])
    return title, columns, rows


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
        w.writerow([row["init"]] + cells)
    return buf.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")


def _data_name(data: Path) -> str:
    """`pneumoniamnist`, not `manifest.csv`: a table named like the loaders' defaults says little."""
    return data.resolve().parent.name if data.is_file() and data.name in TABLE_NAMES else data.name


def out_dir(cfg: FinetuneConfig) -> Path:
    if cfg.out is not None:
        return cfg.out
    return cfg.runs_dir / (cfg.name or f"finetune-{cfg.mode}-{time.strftime('%Y%m%d-%H%M%S')}")


def finetune(cfg: FinetuneConfig, reporter: Reporter | None = None) -> Path | None:
    """Run the sweep in cfg; returns the output folder (results.json, table.json/csv, plot, models/); None after
    --dry-run."""
    rep = reporter or NullReporter()
    device = pick_device(cfg.device)
    if cfg.task == "segmentation":
        return segmentation_sweep(cfg, rep, device)
    rows, labels, splits, summary = prepare_data(cfg, rep)
    metric = cfg.metric or PRIMARY[labels.task]
    known = METRICS[labels.task] + ([f"{m}/{n}" for m in ("auc", "auprc") for n in labels.names]
                                    if labels.task == "multilabel" else [])
    if metric not in known:
        raise ConvirtError(f"--metric {metric} is not a {labels.task} metric; use one of {', '.join(known)}")
    specs = [resolve_init(s, cfg.runs_dir) for s in cfg.init]
    baseline = random_model(cfg, specs)
    icfgs = [init_image_config(s, baseline, cfg.image_size) for s in specs]  # fails early on a bad init
    if cfg.dry_run:  # labels, splits and inits checked; no image decoded, nothing written
        describe_data(rep, summary, dry_run=True)
        return None
    sizes = list(dict.fromkeys(c.image_size for c in icfgs))
    images: dict[int, np.ndarray] = {}
    images[sizes[0]], bad = decode_images(rows, sizes[0], max(2, cfg.num_workers), cfg.window)
    if bad:  # unreadable despite a good header: drop from every split, count them
        summary["skip_reasons"]["unreadable image"] = summary["skip_reasons"].get("unreadable image", 0) + len(bad)
        summary["skipped"] += len(bad)
        bad_set = set(bad)
        splits = {k: np.asarray([i for i in v if i not in bad_set], dtype=np.int64) for k, v in splits.items()}
        summary["splits"] = {k: len(v) for k, v in splits.items()}
    describe_data(rep, summary, dry_run=False)
    train_idx, val_idx, test_idx = splits["train"], splits["val"], splits["test"]
    eval_split = "test" if len(test_idx) else "val"

    out = out_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.model_dump(mode="json") | {"init": specs, "random_model": baseline})
    # the same subsets for every init: sampled from the training split by (fraction, seed) only
    subsets = {(f, s): train_idx[sample_fraction(labels.subset(train_idx), f, cfg.seed + s)]
               for f in cfg.label_fraction for s in range(cfg.seeds)}
    used = labels_used(cfg.label_fraction, cfg.seeds, subsets, len(train_idx))
    for f, u in used.items():
        if u["raised"]:
            rep.warn(f"--label-fraction {float(f):g}: {float(f):.2%} of the {len(train_idx)} labelled training rows is "
                     f"{float(f) * len(train_idx):.2g} rows; it takes {u['n_min']} ({u['fraction_min']:.1%}) so that every "
                     "class keeps an example. The table reports the rows used.")
    rep.start("finetune", len(specs) * len(subsets))
    names = [init_label(s, baseline, cfg.pretrained) for s in specs]
    if len(set(names)) < len(names):  # two runs with the same folder name: show the paths as given
        names = specs
    records: list[dict] = []
    for spec, icfg, name in zip(specs, icfgs, names):
        size = icfg.image_size
        if size not in images:
            images[size], _ = decode_images(rows, size, max(2, cfg.num_workers), cfg.window)
        imgs = images[size]
        tower = build_tower(spec, baseline, cfg.pretrained, cfg.image_size, cfg.seed)
        feats = None
        if cfg.mode == "linear":
            tower.requires_grad_(False)
            feats = extract_features(tower, imgs, device)  # once per init: every head reuses them
            tower.cpu()
        for (fraction, s), tr in subsets.items():
            seed = cfg.seed + s
            rep.update(len(records), f"{name} {fraction:g} seed {seed} ({len(tr)} labelled)")
            t0 = time.perf_counter()
            if cfg.mode == "linear":
                model, info = linear_classifier(tower, labels, feats, tr, val_idx, seed)
                scores = scores_from_features(model, feats[test_idx if len(test_idx) else val_idx])
            else:
                model, info = train_full(tower, labels, imgs, tr, val_idx, cfg, seed, device, metric,
                                         lambda r: rep.update(len(records), epoch_status(r)))
                scores = predict(model, imgs[test_idx if len(test_idx) else val_idx], device)
            ev_idx = test_idx if len(test_idx) else val_idx
            report = test_report(labels.task, labels.y[ev_idx], scores, labels.names, cfg.bootstrap, seed)
            record: dict[str, Any] = {
                "init": name, "init_spec": spec, "fraction": fraction, "seed": seed, "mode": cfg.mode,
                "n_train": len(tr), "n_val": len(val_idx), "n_eval": len(ev_idx),
                "val": info["val"], eval_split: report["metrics"], f"{eval_split}_ci95": report["ci95"],
                "seconds": round(time.perf_counter() - t0, 2),
            } | {k: v for k, v in info.items() if k != "val"}
            if cfg.save_models:
                model.meta = {"init": spec, "fraction": fraction, "seed": seed, "mode": cfg.mode,
                              "data": str(cfg.data), "label_columns": labels.columns}
                mdir = out / "models" / _slug(f"{name}_f{fraction:g}_s{seed}")
                save_classifier(model.cpu(), mdir)
                record["model_dir"] = str(mdir)
            records.append(record)
            rep.note(run_line(record))
            rep.update(len(records), "")
            write_json(out / "results.json", {"summary": summary, "metric": metric, "records": records})
        del tower, feats

    table = results_table(records, metric, eval_split)
    table["task"], table["mode"], table["used"] = labels.task, cfg.mode, used
    write_json(out / "table.json", table)
    atomic_write_text(out / "table.csv", table_csv(table))
    write_json(out / "results.json", {"summary": summary, "metric": metric, "records": records, "table": table})
    if cfg.plot:
        from convirt_cli.torchfree.plots import data_efficiency

        data_efficiency(table, out / "data_efficiency.png",
                        title=f"{cfg.mode} on {_data_name(Path(cfg.data))} ({', '.join(labels.columns)})")
    rep.table(*table_view(table))
    rep.end(f"done: table, plot and classifiers in {out}")
    return out


# ---------------------------------------------------------------- segmentation (RAD-DINO's patch-token probe)

def load_masks(rows: list[Row], col: str, size: int, base: Path) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The binary mask of every row (a path relative to the table, like its image) at the model's input size,
    resized and cropped exactly as its image."""
    out = np.zeros((len(rows), size, size), bool)
    bad = []
    for i, r in enumerate(rows):
        rel = r.columns.get(col, "").strip()
        if not rel:
            bad.append((r.source, f"no mask in column '{col}'"))
            continue
        try:
            out[i] = load_gray(base / rel, size) > 127
        except (OSError, ValueError) as e:
            bad.append((r.source, f"unreadable mask ({type(e).__name__})"))
    return out, bad


def segmentation_sweep(cfg: FinetuneConfig, rep: Reporter, device: torch.device) -> Path | None:
    """Per init: frozen patch features once; per (label fraction, seed): the linear segmentation head; test Dice and
    IoU with bootstrap intervals over images; the same table, CSV and plot as the classification sweep."""
    from convirt_cli.torch.segment import dense_features, fit_segmentation_probe, predict_masks
    from convirt_cli.torchfree.evaluate.metrics import dice_iou, segmentation_metrics

    if cfg.mode != "linear":
        raise ConvirtError("--task segmentation is a linear probe on frozen patch features; use --mode linear")
    rows = read_rows(cfg.data, cfg.image_col, None, cfg.encoding, workers=cpu_workers(), progress=rep.reading,
                     join=cfg.join, warn=rep.warn)
    if rows and cfg.mask_col not in rows[0].columns:
        raise ConvirtError(f"{cfg.data}: no column '{cfg.mask_col}' (columns: {', '.join(rows[0].columns)}); "
                           "pass --mask-col NAME")
    checked = validate_rows(rows, need_text=False, strict=cfg.strict, where=cfg.where, progress=rep.reading)
    rows = checked.usable
    skipped = [(r.source, reason) for r, reason in checked.skipped]
    specs = [resolve_init(s, cfg.runs_dir) for s in cfg.init]
    baseline = random_model(cfg, specs)
    icfgs = [init_image_config(s, baseline, cfg.image_size) for s in specs]
    size = icfgs[0].image_size
    if any(c.image_size != size for c in icfgs):
        raise ConvirtError("--task segmentation compares inits at one image size; pass --image-size PX")
    table = find_table(Path(cfg.data))
    masks, bad_masks = load_masks(rows, cfg.mask_col, size, table.parent if table else Path(cfg.data))
    images, bad_images = decode_images(rows, size, max(2, cfg.num_workers), cfg.window)
    drop = {src for src, _ in bad_masks} | {rows[i].source for i in bad_images}
    skipped += bad_masks + [(rows[i].source, "unreadable image") for i in bad_images]
    keep = np.asarray([i for i, r in enumerate(rows) if r.source not in drop], dtype=np.int64)
    rows, images, masks = [rows[i] for i in keep], images[keep], masks[keep]
    split = split_rows(rows, cfg.val_fraction, cfg.test_fraction, cfg.split_col, cfg.patient_col, cfg.seed)
    pos = {id(r): i for i, r in enumerate(rows)}
    splits = {k: np.asarray([pos[id(r)] for r in v], dtype=np.int64) for k, v in split.items()}
    if len(splits["train"]) == 0:
        raise ConvirtError(f"no training images after the split ({len(rows)} usable); check --split-col")
    summary = {"found": checked.found, "usable": len(rows), "skipped": len(skipped),
               "skip_reasons": _count(reason_kind(reason) for _, reason in skipped), "skipped_examples": skipped[:5],
               "splits": {k: len(v) for k, v in splits.items()}, "task": "segmentation",
               "split_by": describe_split(rows, cfg.split_col, cfg.patient_col),
               "labels": [cfg.mask_col], "columns": [cfg.mask_col]}
    describe_data(rep, summary, dry_run=cfg.dry_run)
    if cfg.dry_run:
        return None
    train_idx, val_idx, test_idx = splits["train"], splits["val"], splits["test"]
    eval_split, ev_idx = ("test", test_idx) if len(test_idx) else ("val", val_idx)
    out = out_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.model_dump(mode="json") | {"init": specs, "random_model": baseline})
    rng_subsets = {(f, s): np.sort(np.random.default_rng(cfg.seed + s).permutation(train_idx)[
        :max(1, math.ceil(f * len(train_idx)))]) for f in cfg.label_fraction for s in range(cfg.seeds)}
    used = labels_used(cfg.label_fraction, cfg.seeds, rng_subsets, len(train_idx))
    rep.start("finetune", len(specs) * len(rng_subsets))
    names = [init_label(s, baseline, cfg.pretrained) for s in specs]
    has_target = masks[ev_idx].reshape(len(ev_idx), -1).any(1)
    records: list[dict] = []
    for spec, name in zip(specs, names):
        tower = build_tower(spec, baseline, cfg.pretrained, cfg.image_size, cfg.seed)
        tower.requires_grad_(False)
        feats = dense_features(tower, images, device)
        for (fraction, s), tr in rng_subsets.items():
            seed = cfg.seed + s
            rep.update(len(records), f"{name} {fraction:g} seed {seed} ({len(tr)} labelled)")
            t0 = time.perf_counter()
            head = fit_segmentation_probe(feats[tr], masks[tr], feats[val_idx], masks[val_idx])
            pred = predict_masks(head["weight"], head["bias"], feats[ev_idx], (size, size), head["threshold"])
            dice, iou = dice_iou(pred, masks[ev_idx])
            metrics = segmentation_metrics(dice, iou, has_target)
            ci = bootstrap_ci(lambda i, d=dice, j=iou: segmentation_metrics(d[i], j[i], has_target[i]), len(ev_idx),
                              cfg.bootstrap, seed) if cfg.bootstrap else {}
            record = {"init": name, "init_spec": spec, "fraction": fraction, "seed": seed, "mode": "linear",
                      "n_train": len(tr), "n_val": len(val_idx), "n_eval": len(ev_idx), "val": head["val"],
                      eval_split: metrics, f"{eval_split}_ci95": ci, "l2": head["l2"], "threshold": head["threshold"],
                      "grid": list(feats.shape[1:3]), "seconds": round(time.perf_counter() - t0, 2)}
            records.append(record)
            rep.note(run_line(record))
            rep.update(len(records), "")
            write_json(out / "results.json", {"summary": summary, "metric": PRIMARY["segmentation"],
                                              "records": records})
        del tower, feats
    table = results_table(records, cfg.metric or PRIMARY["segmentation"], eval_split)
    table["task"], table["mode"], table["used"] = "segmentation", "linear", used
    write_json(out / "table.json", table)
    atomic_write_text(out / "table.csv", table_csv(table))
    write_json(out / "results.json", {"summary": summary, "metric": table["metric"], "records": records,
                                      "table": table})
    if cfg.plot:
        from convirt_cli.torchfree.plots import data_efficiency

        data_efficiency(table, out / "data_efficiency.png",
                        title=f"segmentation probe on {_data_name(Path(cfg.data))} ({cfg.mask_col})")
    rep.table(*table_view(table))
    rep.end(f"done: table, plot and classifiers in {out}")
    return out
