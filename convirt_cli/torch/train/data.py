"""Pretraining's data phase: rows (a table, a folder) or shards -> checked, deduplicated, split rows -> the
objective's datasets -> the loaders one step and one validation read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from convirt_cli.torch.data.dataset import EpochSampler
from convirt_cli.torch.objectives import Objective
from convirt_cli.torch.train.distributed import Dist
from convirt_cli.torchfree.config import PretrainConfig
from convirt_cli.torchfree.data.readers import Row, read_rows
from convirt_cli.torchfree.data.split import describe_split, split_rows
from convirt_cli.torchfree.data.validate import Validation, image_kinds, validate_rows
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.processes import cpu_workers
from convirt_cli.torchfree.report import Reporter, data_lines
from convirt_cli.torchfree.stop import ignore_signals


def dedupe(v: Validation) -> Validation:
    """An (image, report) pair given twice would be its own negative in a contrastive batch: keep the first."""
    seen: dict[tuple[Path, int | None, str], str] = {}
    usable = []
    for r in v.usable:
        key = (r.image, r.slice, r.text.strip())
        if key in seen:
            v.skipped.append((r, f"duplicate pair (of {seen[key]})"))
        else:
            seen[key] = r.source
            usable.append(r)
    v.usable = usable
    return v


def prepare_rows(cfg: PretrainConfig, need_text: bool,
                 rep: Reporter) -> tuple[list[Row], list[Row], int | None, dict]:
    """(train rows, validation rows, the smallest image's shorter side, what was read / skipped / split for
    summary.json)."""
    rows = read_rows(cfg.data, cfg.image_col, cfg.text_col if need_text else None, cfg.encoding, cfg.sections,
                     workers=cpu_workers(), progress=rep.reading, join=cfg.join, warn=rep.warn, slices=cfg.slices)
    checked = dedupe(validate_rows(rows, need_text=need_text, strict=cfg.strict, where=cfg.where,
                                   progress=rep.reading))
    splits = split_rows(checked.usable, cfg.val_fraction, 0.0, cfg.split_col, cfg.patient_col, cfg.seed)
    by = describe_split(checked.usable, cfg.split_col, cfg.patient_col)
    kinds = image_kinds(checked.usable)
    summary = {"found": checked.found, "usable": len(checked.usable), "skipped": len(checked.skipped),
               "skip_reasons": dict(checked.reasons().most_common()), "split_by": by, "image_kinds": kinds,
               "skipped_examples": [(row.source, reason) for row, reason in checked.skipped[:5]],
               "splits": {k: len(v) for k, v in splits.items()}, "test_unused": True}
    for line in data_lines(summary, "pairs" if need_text else "images"):
        rep.note(line)
    if len(splits["train"]) < 2:
        raise ConvirtError(f"only {len(splits['train'])} training pairs after the split; need at least 2")
    data = {"found": checked.found, "usable": len(checked.usable), "skipped": dict(checked.reasons()),
            "split": by, "kinds": kinds}
    return splits["train"], splits["val"], checked.min_side, data


def prepare_shards(cfg: PretrainConfig, rep: Reporter):
    """Shards written by `convirt shard`: validated and split then; their counts and skips come from shards.json."""
    from convirt_cli.torch.data.shards import open_shards

    sets = open_shards(cfg.data)
    train, val = sets["train"], sets["val"]
    if not train.count:
        raise ConvirtError(f"{cfg.data}: how many samples these shards hold is unknown (no shards.json beside them); "
                           "point at the folder `convirt shard` wrote")
    meta = train.meta
    for key, wanted, none in (("sections", cfg.sections, "whole reports"), ("where", cfg.where, "every row"),
                              ("join", [str(p) for p in cfg.join], "no joined table")):
        stored = meta.get(key, [])
        if wanted and wanted != stored:  # rows and texts were chosen when the shards were written
            held = f"--{key} {' '.join(stored)}" if stored else none
            raise ConvirtError(f"--{key} {' '.join(wanted)}: these shards hold what was chosen when they were written "
                               f"({held}); pass --{key} to `convirt shard` instead")
    rep.note(f"shards: train {len(train)} samples in {len(train.urls)} shards, val {len(val)}; written with "
             f"max side {meta.get('max_side')}, window {meta.get('window')}, slices {meta.get('slices', 'middle')}; "
             f"{sum(meta.get('skipped', {}).values())} skipped when written")
    data = {"found": len(train) + len(val) + sum(meta.get("skipped", {}).values()), "usable": len(train) + len(val),
            "skipped": meta.get("skipped", {}), "split": "decided by `convirt shard`", "shards": len(train.urls),
            "window": meta.get("window")}
    return train, val, None, data


@dataclass
class Loaders:
    """What one epoch reads: the training loader (per-rank batches of batch_size rows, --accum-steps chunks
    included) and the validation loader (None when fewer than 2 validation rows)."""

    train: DataLoader
    val: DataLoader | None
    dataset: Dataset
    sampler: EpochSampler | None  # None: streamed shards, resampled per epoch
    batch_size: int
    steps_per_epoch: int

    def start_epoch(self, epoch: int, batch_in_epoch: int) -> None:
        """Epoch `epoch`'s order, from its `batch_in_epoch`-th batch on (a resumed run replays the rest)."""
        self.dataset.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, start=batch_in_epoch * self.batch_size)


MAX_LOADER_WORKERS = 8  # decoding 224 px PNGs for ResNet-50 + BERT-base at batch 256 on an H200 (RESULTS.md)
PREFETCH = 4  # batches each worker keeps ready: a slow file does not stall the step


def loader_workers(given: int | None, device: torch.device) -> int:
    """DataLoader workers: as given, else on an accelerator one per core up to MAX_LOADER_WORKERS, one core left to
    the loop; on CPU none (the model's threads use the cores, and workers would only take them away)."""
    if given is not None:
        return given
    if device.type == "cpu":
        return 0
    return max(1, min(MAX_LOADER_WORKERS, cpu_workers() - 1))


def make_loaders(cfg: PretrainConfig, obj: Objective, train_rows: list[Row], val_rows: list[Row],
                 device: torch.device, dist: Dist) -> Loaders:
    train_ds = obj.dataset(train_rows, train=True, seed=cfg.seed)
    streamed = isinstance(train_ds, torch.utils.data.IterableDataset)
    sampler = None if streamed else EpochSampler(len(train_ds), cfg.seed, shuffle=True, rank=dist.rank,
                                                 world=dist.world)
    per_rank = len(train_ds) if streamed else len(sampler.indices())
    batch_size = min(cfg.batch_size * cfg.accum_steps, per_rank)  # --accum-steps: one contrastive batch, chunked
    if batch_size < 2:
        raise ConvirtError(f"{per_rank} training pairs per process: too few for a contrastive batch")
    n = loader_workers(cfg.num_workers, device)
    workers = {"num_workers": n, "worker_init_fn": ignore_signals if n else None} | (
        {"prefetch_factor": PREFETCH} if n else {})
    loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, collate_fn=obj.collate, drop_last=True,
                        generator=torch.Generator(),  # keeps DataLoader seeding off the global RNG (resume replays)
                        pin_memory=device.type == "cuda", persistent_workers=False, **workers)
    if streamed:
        train_ds.epoch_samples = (per_rank // batch_size) * batch_size * dist.world  # whole batches, as from a table
    val = DataLoader(obj.dataset(val_rows, train=False, seed=cfg.seed), batch_size=batch_size,
                     collate_fn=obj.collate, **workers) if len(val_rows) >= 2 else None
    return Loaders(loader, val, train_ds, sampler, batch_size, per_rank // batch_size)
