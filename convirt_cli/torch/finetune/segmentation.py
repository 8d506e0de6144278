"""`convirt finetune --task segmentation`: RAD-DINO's patch-token probe swept like the classifiers. Per init: frozen
patch features once; per (label fraction, seed): the linear segmentation head (torch/segment.py); test Dice and IoU
with bootstrap intervals over images; the same table, CSV and plot as the classification sweep."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from convirt_cli.torch.finetune.data import skip_summary, split_indices
from convirt_cli.torch.finetune.inits import Init, build_tower, resolve_inits
from convirt_cli.torch.finetune.report import describe_data, finish, run_line, run_status
from convirt_cli.torch.finetune.results import data_name, labels_used, out_dir, write_results
from convirt_cli.torchfree.config import FinetuneConfig
from convirt_cli.torchfree.data.readers import Row, find_table, read_rows
from convirt_cli.torchfree.data.split import describe_split
from convirt_cli.torchfree.data.validate import validate_rows
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.evaluate.metrics import PRIMARY, bootstrap_ci, dice_iou, segmentation_metrics
from convirt_cli.torchfree.files import write_json
from convirt_cli.torchfree.outputs import fresh_dir
from convirt_cli.torchfree.preprocess import Preprocess
from convirt_cli.torchfree.processes import cpu_workers
from convirt_cli.torchfree.report import Reporter


def load_masks(rows: list[Row], col: str, size: int, base: Path) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The binary mask of every row (a path relative to the table, like its image) at the model's input size,
    resized and cropped exactly as its image."""
    from convirt_cli.torchfree.imageio import load_gray

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


def segmentation_data(cfg: FinetuneConfig, rep: Reporter, pre: Preprocess):
    """Rows with a readable image and mask, decoded at the inits' preprocessing: (images [N, 1, S, S],
    masks [N, S, S], split -> indices, summary)."""
    rows = read_rows(cfg.data, cfg.image_col, None, cfg.encoding, workers=cpu_workers(), progress=rep.reading,
                     join=cfg.join, warn=rep.warn)
    if rows and cfg.mask_col not in rows[0].columns:
        raise ConvirtError(f"{cfg.data}: no column '{cfg.mask_col}' (columns: {', '.join(rows[0].columns)}); "
                           "pass --mask-col NAME")
    checked = validate_rows(rows, need_text=False, strict=cfg.strict, where=cfg.where, progress=rep.reading)
    rows = checked.usable
    skipped = [(r.source, reason) for r, reason in checked.skipped]
    table = find_table(Path(cfg.data))
    masks, bad_masks = load_masks(rows, cfg.mask_col, pre.image_size, table.parent if table else Path(cfg.data))
    images, bad_images = pre.decode_all([r.image for r in rows], [r.slice for r in rows], max(2, cfg.num_workers or 0))
    drop = {src for src, _ in bad_masks} | {rows[i].source for i in bad_images}
    skipped += bad_masks + [(rows[i].source, "unreadable image") for i in bad_images]
    keep = np.asarray([i for i, r in enumerate(rows) if r.source not in drop], dtype=np.int64)
    rows, images, masks = [rows[i] for i in keep], images[keep], masks[keep]
    splits = split_indices(rows, cfg)
    if len(splits["train"]) == 0:
        raise ConvirtError(f"no training images after the split ({len(rows)} usable); check --split-col")
    summary = skip_summary(checked.found, rows, skipped, splits) | {
        "task": "segmentation", "split_by": describe_split(rows, cfg.split_col, cfg.patient_col),
        "labels": [cfg.mask_col], "columns": [cfg.mask_col]}
    return images, masks, splits, summary


def segmentation_sweep(cfg: FinetuneConfig, rep: Reporter, device: torch.device) -> Path | None:
    if cfg.mode != "linear":
        raise ConvirtError("--task segmentation is a linear probe on frozen patch features; use --mode linear")
    inits, baseline = resolve_inits(cfg)
    pre = inits[0].image.preprocess
    if any(i.image.preprocess.image_size != pre.image_size for i in inits):
        raise ConvirtError("--task segmentation compares inits at one image size; pass --image-size PX")
    if any((i.image.window != pre.window) for i in inits):
        raise ConvirtError(f"--task segmentation compares inits on one preprocessing; these read pixels with windows "
                           f"{', '.join(sorted({i.image.window for i in inits}))}: sweep them separately")
    images, masks, splits, summary = segmentation_data(cfg, rep, pre)
    describe_data(rep, summary, dry_run=cfg.dry_run)
    if cfg.dry_run:
        return None
    out = out_dir(cfg)
    fresh_dir(out, "finetune")
    write_json(out / "config.json", cfg.model_dump(mode="json") | {"init": [i.spec for i in inits],
                                                                   "random_model": baseline})
    train_idx = splits["train"]
    subsets = {(f, s): np.sort(np.random.default_rng(cfg.seed + s).permutation(train_idx)[
        :max(1, math.ceil(f * len(train_idx)))]) for f in cfg.label_fraction for s in range(cfg.seeds)}
    rep.start("finetune", len(inits) * len(subsets))
    records: list[dict] = []

    def save() -> None:  # after every run: a sweep stopped half way keeps what it measured
        write_json(out / "results.json", {"summary": summary, "metric": PRIMARY["segmentation"], "records": records})

    for init in inits:
        _probe_init(cfg, init, baseline, images, masks, splits, subsets, device, rep, records, save)
    table = write_results(out, summary, records, cfg.metric or PRIMARY["segmentation"],
                          "test" if len(splits["test"]) else "val", "segmentation", "linear",
                          labels_used(cfg.label_fraction, cfg.seeds, subsets, len(train_idx)),
                          f"segmentation probe on {data_name(Path(cfg.data))} ({cfg.mask_col})" if cfg.plot else None)
    finish(rep, out, table)
    return out


def _probe_init(cfg: FinetuneConfig, init: Init, baseline: str, images: np.ndarray, masks: np.ndarray,
                splits: dict[str, np.ndarray], subsets: dict, device: torch.device, rep: Reporter,
                records: list[dict], save: Callable[[], None]) -> None:
    """One init: frozen patch features once, then a segmentation head per (fraction, seed), scored by Dice/IoU;
    each run's record appended to `records`, then saved."""
    from convirt_cli.torch.segment import dense_features, fit_segmentation_probe, predict_masks

    val_idx = splits["val"]
    split, ev = ("test", splits["test"]) if len(splits["test"]) else ("val", val_idx)
    size = images.shape[-1]
    tower = build_tower(init.spec, baseline, cfg.pretrained, cfg.image_size, cfg.seed, cfg.window)
    tower.requires_grad_(False)
    feats = dense_features(tower, images, device)
    has_target = masks[ev].reshape(len(ev), -1).any(1)
    for (fraction, s), tr in subsets.items():
        seed = cfg.seed + s
        rep.update(len(records), run_status(init.name, fraction, seed, len(tr)))
        t0 = time.perf_counter()
        head = fit_segmentation_probe(feats[tr], masks[tr], feats[val_idx], masks[val_idx])
        pred = predict_masks(head["weight"], head["bias"], feats[ev], (size, size), head["threshold"])
        dice, iou = dice_iou(pred, masks[ev])
        ci = bootstrap_ci(lambda i, d=dice, j=iou: segmentation_metrics(d[i], j[i], has_target[i]), len(ev),
                          cfg.bootstrap, seed) if cfg.bootstrap else {}
        records.append({"init": init.name, "init_spec": init.spec, "fraction": fraction, "seed": seed,
                        "mode": "linear", "n_train": len(tr), "n_val": len(val_idx), "n_eval": len(ev),
                        "val": head["val"], split: segmentation_metrics(dice, iou, has_target), f"{split}_ci95": ci,
                        "l2": head["l2"], "threshold": head["threshold"], "grid": list(feats.shape[1:3]),
                        "seconds": round(time.perf_counter() - t0, 2)})
        rep.note(run_line(records[-1]))
        rep.update(len(records), "")
        save()

