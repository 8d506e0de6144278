"""`convirt finetune`: the classification sweep over inits x label fractions x seeds (ConVIRT sec. 4, Table 1).

data -> inits (each with its tower's preprocessing) -> images decoded per preprocessing -> label subsets (the same
for every init) -> per init: per (fraction, seed) a linear probe or a full fine-tune -> test metrics, predictions,
classifiers -> table, plot. The sweep reports through a `Reporter` (torchfree/report.py; the CLI draws it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convirt_cli.torch.classifier import save_classifier
from convirt_cli.torch.finetune.data import Images, prepare_data
from convirt_cli.torch.finetune.full import predict, train_full
from convirt_cli.torch.finetune.inits import Init, build_tower, resolve_inits
from convirt_cli.torch.finetune.linear import linear_classifier, scores_from_features
from convirt_cli.torch.finetune.report import describe_data, epoch_status, finish, run_line, run_status
from convirt_cli.torch.finetune.results import (
    data_name,
    labels_used,
    out_dir,
    run_name,
    test_report,
    write_predictions,
    write_results,
)
from convirt_cli.torch.probe import extract_features
from convirt_cli.torch.train.device import pick_device
from convirt_cli.torchfree.config import FinetuneConfig
from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.evaluate.labels import Labels, sample_fraction
from convirt_cli.torchfree.evaluate.metrics import METRICS, PRIMARY
from convirt_cli.torchfree.files import write_json
from convirt_cli.torchfree.outputs import check_folder, fresh_dir, locked
from convirt_cli.torchfree.report import NullReporter, Reporter


def check_metric(cfg: FinetuneConfig, labels: Labels) -> str:
    metric = cfg.metric or PRIMARY[labels.task]
    known = METRICS[labels.task] + ([f"{m}/{n}" for m in ("auc", "auprc") for n in labels.names]
                                    if labels.task == "multilabel" else [])
    if metric not in known:
        raise ConvirtError(f"--metric {metric} is not a {labels.task} metric; use one of {', '.join(known)}")
    return metric


def drop_unreadable(bad: list[int], splits: dict[str, np.ndarray], summary: dict) -> dict[str, np.ndarray]:
    """Rows whose image would not decode despite a good header leave every split, counted in the summary."""
    if not bad:
        return splits
    summary["skip_reasons"]["unreadable image"] = summary["skip_reasons"].get("unreadable image", 0) + len(bad)
    summary["skipped"] += len(bad)
    bad_set = set(bad)
    splits = {k: np.asarray([i for i in v if i not in bad_set], dtype=np.int64) for k, v in splits.items()}
    summary["splits"] = {k: len(v) for k, v in splits.items()}
    return splits


def label_subsets(cfg: FinetuneConfig, labels: Labels, train_idx: np.ndarray, rep: Reporter) -> tuple[dict, dict]:
    """(fraction, seed) -> the training rows used (the same for every init), and what each fraction came to."""
    subsets = {(f, s): train_idx[sample_fraction(labels.subset(train_idx), f, cfg.seed + s)]
               for f in cfg.label_fraction for s in range(cfg.seeds)}
    used = labels_used(cfg.label_fraction, cfg.seeds, subsets, len(train_idx))
    for f, u in used.items():
        if u["raised"]:
            rep.warn(f"--label-fraction {float(f):g}: {float(f):.2%} of the {len(train_idx)} labelled training rows is "
                     f"{float(f) * len(train_idx):.2g} rows; it takes {u['n_min']} ({u['fraction_min']:.1%}) so that every "
                     "class keeps an example. The table reports the rows used.")
    return subsets, used


def finetune(cfg: FinetuneConfig, reporter: Reporter | None = None) -> Path | None:
    """Run the sweep in cfg; returns the output folder (results.json, table.json/csv, plot, predictions/, models/);
    None after --dry-run. The folder must be absent, empty or a finetune folder (which is replaced), and is locked
    while written (`cfg.wait`: wait for another writer)."""
    rep = reporter or NullReporter()
    device = pick_device(cfg.device)
    if cfg.task == "segmentation":
        from convirt_cli.torch.finetune.segmentation import segmentation_sweep as sweep
    else:
        sweep = classification_sweep
    if cfg.dry_run:
        return sweep(cfg, rep, device)
    flag = "--out" if cfg.out else "--runs-dir"
    cfg = cfg.model_copy(update={"out": out_dir(cfg)})  # named once: the default carries the time
    check_folder(cfg.out, "finetune", flag, inputs=[cfg.data, *cfg.join])
    with locked(cfg.out, cfg.wait):
        return sweep(cfg, rep, device)


def classification_sweep(cfg: FinetuneConfig, rep: Reporter, device: torch.device) -> Path | None:
    """Labels, inits and images read; a classifier per (init, fraction, seed); the table and plot written."""
    rows, labels, splits, summary = prepare_data(cfg, rep)
    metric = check_metric(cfg, labels)
    inits, baseline = resolve_inits(cfg)
    if cfg.dry_run:  # labels, splits and inits checked; no image decoded, nothing written
        describe_data(rep, summary, dry_run=True)
        return None
    images = Images(rows, max(2, cfg.num_workers or 0))
    splits = drop_unreadable(images.get(inits[0].image.preprocess)[1], splits, summary)
    describe_data(rep, summary, dry_run=False)
    out = out_dir(cfg)
    fresh_dir(out, "finetune")
    write_json(out / "config.json", cfg.model_dump(mode="json") | {"init": [i.spec for i in inits],
                                                                   "random_model": baseline})
    subsets, used = label_subsets(cfg, labels, splits["train"], rep)
    rep.start("finetune", len(inits) * len(subsets))
    sweep = _Sweep(cfg, rows, labels, splits, out, metric, device, rep, summary)
    for init in inits:
        sweep.init(init, baseline, images.get(init.image.preprocess)[0], subsets)
    table = write_results(out, summary, sweep.records, metric, sweep.split, labels.task, cfg.mode, used,
                          f"{cfg.mode} on {data_name(Path(cfg.data))} ({', '.join(labels.columns)})"
                          if cfg.plot else None)
    finish(rep, out, table)
    return out


class _Sweep:
    """The runs of one sweep and what they share: data, labels, splits, where results go."""

    def __init__(self, cfg: FinetuneConfig, rows: list[Row], labels: Labels, splits: dict[str, np.ndarray],
                 out: Path, metric: str, device: torch.device, rep: Reporter, summary: dict):
        self.cfg, self.rows, self.labels, self.out, self.metric = cfg, rows, labels, out, metric
        self.device, self.rep, self.summary = device, rep, summary
        self.val_idx = splits["val"]
        self.split, self.eval_idx = ("test", splits["test"]) if len(splits["test"]) else ("val", splits["val"])
        self.records: list[dict] = []

    def init(self, init: Init, baseline: str, imgs: np.ndarray, subsets: dict) -> None:
        """One init: its tower (features once, for a linear probe), then a classifier per (fraction, seed)."""
        cfg = self.cfg
        tower = build_tower(init.spec, baseline, cfg.pretrained, cfg.image_size, cfg.seed, cfg.window)
        feats = None
        if cfg.mode == "linear":
            tower.requires_grad_(False)
            feats = extract_features(tower, imgs, self.device)  # once per init: every head reuses them
            tower.cpu()
        for (fraction, s), train_idx in subsets.items():
            self.rep.update(len(self.records), run_status(init.name, fraction, cfg.seed + s, len(train_idx)))
            record = self.run(init, tower, imgs, feats, fraction, cfg.seed + s, train_idx)
            self.records.append(record)
            self.rep.note(run_line(record))
            self.rep.update(len(self.records), "")
            write_json(self.out / "results.json", {"summary": self.summary, "metric": self.metric,
                                                   "records": self.records})

    def run(self, init: Init, tower, imgs: np.ndarray, feats: np.ndarray | None, fraction: float, seed: int,
            train_idx: np.ndarray) -> dict:
        """One classifier: trained, scored on the test split (else val), its predictions and weights saved."""
        cfg, labels, ev = self.cfg, self.labels, self.eval_idx
        t0 = time.perf_counter()
        if cfg.mode == "linear":
            model, info = linear_classifier(tower, labels, feats, train_idx, self.val_idx, seed)
            scores = scores_from_features(model, feats[ev])
        else:
            model, info = train_full(tower, labels, imgs, train_idx, self.val_idx, cfg, seed, self.device,
                                     self.metric, lambda r: self.rep.update(len(self.records), epoch_status(r)))
            scores = predict(model, imgs[ev], self.device)
        report = test_report(labels.task, labels.y[ev], scores, labels.names, cfg.bootstrap, seed)
        name = run_name(init.name, fraction, seed)
        record: dict[str, Any] = {
            "init": init.name, "init_spec": init.spec, "fraction": fraction, "seed": seed, "mode": cfg.mode,
            "n_train": len(train_idx), "n_val": len(self.val_idx), "n_eval": len(ev), "val": info["val"],
            self.split: report["metrics"], f"{self.split}_ci95": report["ci95"],
            "seconds": round(time.perf_counter() - t0, 2)} | {k: v for k, v in info.items() if k != "val"}
        predictions = self.out / "predictions" / f"{name}.csv"
        write_predictions(predictions, [self.rows[i] for i in ev], self.split, scores, labels.names)
        record["predictions"] = str(predictions)
        if cfg.save_models:
            model.meta = {"init": init.spec, "fraction": fraction, "seed": seed, "mode": cfg.mode,
                          "data": str(cfg.data), "label_columns": labels.columns}
            save_classifier(model.cpu(), self.out / "models" / name)
            record["model_dir"] = str(self.out / "models" / name)
        return record
