"""The sweep's data: rows -> labels (NaN = missing), validated, one row per image, split (a column, or patients);
and the images, decoded once per preprocessing an init asks for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from convirt_cli.torchfree.config import FinetuneConfig
from convirt_cli.torchfree.data.readers import Row, read_rows
from convirt_cli.torchfree.data.split import describe_split, split_rows
from convirt_cli.torchfree.data.validate import image_kinds, reason_kind, validate_rows
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.evaluate.labels import Labels, check_train_classes, parse_labels
from convirt_cli.torchfree.preprocess import Preprocess
from convirt_cli.torchfree.processes import cpu_workers


def prepare_data(cfg: FinetuneConfig, rep) -> tuple[list[Row], Labels, dict[str, np.ndarray], dict]:
    """Read, label, validate and split rows. Returns usable rows, their labels, split -> indices, summary."""
    rows = read_rows(cfg.data, cfg.image_col, None, cfg.encoding, workers=cpu_workers(), progress=rep.reading,
                     join=cfg.join, warn=rep.warn)
    labels = parse_labels(rows, cfg.labels, cfg.task, cfg.missing)  # bad columns fail before any decoding
    checked = validate_rows(rows, need_text=False, strict=cfg.strict, where=cfg.where, progress=rep.reading)
    skipped: list[tuple[str, str]] = [(r.source, reason) for r, reason in checked.skipped]
    keep = {id(r) for r in checked.usable}
    idx = [i for i, r in enumerate(rows) if id(r) in keep]
    has = labels.has_label()
    skipped += [(rows[i].source, "no label") for i in idx if not has[i]]
    idx, duplicates = one_row_per_image(rows, labels.y, [i for i in idx if has[i]])
    skipped += duplicates
    rows, labels = [rows[i] for i in idx], labels.subset(np.asarray(idx, dtype=np.int64))
    splits = split_indices(rows, cfg)
    if len(splits["train"]) == 0:
        raise ConvirtError(f"no labelled training rows after the split ({len(rows)} usable); check --split-col")
    check_train_classes(labels.subset(splits["train"]), [rows[i] for i in splits["train"]])
    summary = skip_summary(checked.found, rows, skipped, splits) | {
        "task": labels.task, "labels": labels.names, "columns": labels.columns,
        "split_by": describe_split(rows, cfg.split_col, cfg.patient_col), "image_kinds": image_kinds(rows)}
    return rows, labels, splits, summary


def split_indices(rows: list[Row], cfg: FinetuneConfig) -> dict[str, np.ndarray]:
    """train / val / test -> row indices (split_rows: by --split-col, else by patient)."""
    split = split_rows(rows, cfg.val_fraction, cfg.test_fraction, cfg.split_col, cfg.patient_col, cfg.seed)
    pos = {id(r): i for i, r in enumerate(rows)}
    return {k: np.asarray([pos[id(r)] for r in v], dtype=np.int64) for k, v in split.items()}


def skip_summary(found: int, rows: list[Row], skipped: list[tuple[str, str]], splits: dict[str, np.ndarray]) -> dict:
    """What the data summary and results.json say about the rows: found, usable, skipped (by reason), split."""
    return {"found": found, "usable": len(rows), "skipped": len(skipped),
            "skip_reasons": dict(Counter(reason_kind(reason) for _, reason in skipped)),
            "skipped_examples": skipped[:5], "splits": {k: len(v) for k, v in splits.items()}}


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


class Images:
    """Every row's image as uint8 [N, 1, S, S], decoded once per (input size, window) an init's preprocessing asks
    for; `bad`: the rows whose image failed to decode under it (their slots stay zero)."""

    def __init__(self, rows: list[Row], workers: int):
        self.paths, self.slices, self.workers = [r.image for r in rows], [r.slice for r in rows], workers
        self._decoded: dict[tuple[int, str], tuple[np.ndarray, list[int]]] = {}

    def get(self, pre: Preprocess) -> tuple[np.ndarray, list[int]]:
        key = (pre.image_size, pre.window)
        if key not in self._decoded:
            self._decoded[key] = pre.decode_all(self.paths, self.slices, self.workers)
        return self._decoded[key]
