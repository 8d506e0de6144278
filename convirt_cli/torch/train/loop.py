"""Pretraining, top to bottom: config -> data -> objective -> AdamW loop -> checkpoints -> run directory.

One loop for every objective (convirt_cli/torch/objectives): it owns the data checks, the step budget, the
schedule, checkpoints, interrupts, metrics and the run's status; the objective owns views, model and loss.
The loop reports through a `Reporter` (torchfree/report.py; the CLI draws it); the library prints nothing.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from convirt_cli.torch.data.dataset import EpochSampler
from convirt_cli.torch.data.shards import is_shard_source
from convirt_cli.torch.model import create_model, load_model, save_model
from convirt_cli.torch.objectives import Objective
from convirt_cli.torch.objectives.convirt import ConVIRTObjective
from convirt_cli.torch.train import guard
from convirt_cli.torch.train.checkpoint import load_latest, save_checkpoint
from convirt_cli.torch.train.device import grad_scaler, pick_device
from convirt_cli.torch.train.distributed import Dist, init_distributed, rank0_time
from convirt_cli.torch.train.schedule import Plateau, warmup_cosine
from convirt_cli.torchfree.config import IMAGE_ONLY, PretrainConfig, apply_recipe
from convirt_cli.torchfree.data.readers import Row, read_rows
from convirt_cli.torchfree.data.split import describe_split, split_rows
from convirt_cli.torchfree.data.validate import Validation, image_kinds, validate_rows
from convirt_cli.torchfree.errors import ConvirtError, Interrupted
from convirt_cli.torchfree.files import read_json, write_json
from convirt_cli.torchfree.processes import cpu_workers
from convirt_cli.torchfree.registry import get_model_config, with_overrides
from convirt_cli.torchfree.report import NullReporter, Reporter, data_lines
from convirt_cli.torchfree.runs import (
    append_jsonl,
    is_run_dir,
    new_run_name,
    read_jsonl,
    set_latest,
    truncate_metrics,
    write_summary,
)
from convirt_cli.torchfree.stop import StopOnSignal, ignore_signals


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    plateau: Plateau = field(default_factory=Plateau)
    bad_images: int = 0
    warned_at: dict | None = None  # the collapse guard's warning, once


# ---------------------------------------------------------------- config and run directory

def find_run(cfg: PretrainConfig) -> Path | None:
    """The run directory: --out, or the newest run with a checkpoint (--resume); None: a new run, named once its
    config is resolved (its model: dino-tiny for --objective dino) and the ranks agree on the time (new_run)."""
    if cfg.out is not None:
        return cfg.out
    if cfg.resume:
        runs = [p.parent.parent for p in cfg.runs_dir.glob("*/checkpoints/step-*")]
        if not runs:
            raise ConvirtError(f"--resume: no run with a checkpoint in {cfg.runs_dir}/; pass --out RUN_DIR")
        return max(runs, key=lambda r: max(p.stat().st_mtime for p in (r / "checkpoints").iterdir()))
    return None


def new_run(cfg: PretrainConfig, dist: Dist, device: torch.device) -> Path:
    return cfg.runs_dir / (cfg.name or new_run_name(cfg.model, rank0_time(dist, device)))


def resolve_config(cfg: PretrainConfig, run: Path | None) -> PretrainConfig:
    """--resume: the run's saved settings, then what the user set now; a new run: the preset's recipe under the
    user's settings. A run never silently changes recipe between its start and its resume."""
    if cfg.resume:
        saved_file = run / "config.json"
        if not saved_file.is_file():
            raise ConvirtError(f"--resume: {run} holds no run to resume (no config.json); drop --resume to start one")
        saved = read_json(saved_file, "delete the run and start again")
        saved.pop("sources", None)
        mine = {k: getattr(cfg, k) for k in cfg.model_fields_set}
        try:
            merged = PretrainConfig.model_validate({k: v for k, v in saved.items() if k in PretrainConfig.model_fields}
                                                   | mine | {"resume": True, "out": run})
        except ValueError as e:
            raise ConvirtError(f"{saved_file}: cannot resume with these settings ({e})") from None
        return merged.with_sources({k: "run" for k in saved} | {k: v for k, v in cfg.sources().items()
                                                                   if k in mine})
    if cfg.data is None:
        raise ConvirtError("no DATA given: `convirt pretrain DATA` (a folder, or a CSV/JSONL table of image,text)")
    if cfg.objective == "dino" and "model" not in cfg.model_fields_set:
        cfg = cfg.updated({"model": "dino-tiny"}, "default for --objective dino")
    preset = get_model_config(cfg.model)
    recipe = dict(preset.train)
    if cfg.image_init is not None:  # the image tower, its input size and window come from that run
        recipe = {k: v for k, v in recipe.items() if k not in ("image_size", "window")}
    try:
        return apply_recipe(cfg, recipe, f"preset {preset.name}")
    except ValueError as e:
        raise ConvirtError(f"preset '{preset.name}': its train recipe is invalid ({e}); fix the preset") from None


# ---------------------------------------------------------------- data

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
            "skipped": meta.get("skipped", {}), "split": "decided by `convirt shard`", "shards": len(train.urls)}
    return train, val, None, data


def use_channels_last(cfg: PretrainConfig, device: torch.device, tower) -> bool:
    """--channels-last as given, else where it pays: CNN image towers on CUDA (config.py)."""
    return cfg.channels_last if cfg.channels_last is not None else device.type == "cuda" and tower.convolutional


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not math.isfinite(loss.item()):
        raise ConvirtError(f"loss became {loss.item()} at step {step}; lower --lr or raise --tau")


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


def build_objective(cfg: PretrainConfig, run: Path, train_rows: list[Row], device: torch.device,
                    dist: Dist) -> Objective:
    """The objective over a fresh model (saved at once: what --resume rebuilds from), or over the run's own."""
    image_weights = cfg.image_weights
    if cfg.resume:
        if not (run / "model.json").is_file():
            raise ConvirtError(f"--resume: {run} holds no model to resume; drop --resume to start one")
        model = load_model(run)
    else:
        base = get_model_config(cfg.model)
        if cfg.image_init is not None:
            if not is_run_dir(cfg.image_init) or not (cfg.image_init / "image").is_dir():
                raise ConvirtError(f"--image-init {cfg.image_init}: not a finished run with an image tower")
            base = base.model_copy(update={"image": get_model_config(cfg.image_init).image})
            image_weights = cfg.image_init / "image"
        if cfg.objective in IMAGE_ONLY:
            base = base.model_copy(update={"text": None, "projection": base.projection if cfg.objective == "simclr"
                                           else None})
        elif base.text is None:
            raise ConvirtError(f"model '{base.name}' is image-only: --objective convirt needs a text tower; pick a "
                               "ConVIRT preset (`convirt models`) and start its image tower from this one with "
                               "--image-init RUN")
        mcfg = with_overrides(base, **{"image.image_size": cfg.image_size, "image.window": cfg.window,
                                       "loss.tau": cfg.tau, "loss.lam": cfg.lam})
        texts = train_rows.texts() if hasattr(train_rows, "texts") else [r.text for r in train_rows]
        model = create_model(mcfg, pretrained=cfg.pretrained, texts=texts,
                             image_weights=image_weights, text_weights=cfg.text_weights)
        save_model(model, run)
    if cfg.objective == "dino":
        from convirt_cli.torch.objectives.dino import DINOObjective, released_head

        return DINOObjective(model, cfg, device, dist, None if cfg.resume else released_head(cfg, image_weights))
    if cfg.objective == "simclr":
        from convirt_cli.torch.objectives.simclr import SimCLRObjective

        return SimCLRObjective(model, cfg, device, dist)
    return ConVIRTObjective(model, cfg, device, dist)


def step_budget(cfg: PretrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(total steps, epochs): --epochs passes, raised to --min-steps on small data, capped by --max-steps."""
    total = max(cfg.epochs * steps_per_epoch, cfg.min_steps)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    return total, math.ceil(total / steps_per_epoch)


def recipe_line(cfg: PretrainConfig, total: int, epochs: int, batch: int) -> str:
    """One line: the settings that decide whether a run learns, and where each came from."""
    src = cfg.sources()

    def show(key: str, value) -> str:
        return f"{key.replace('_', ' ')} {value} ({src[key]})"

    first = [show("objective", cfg.objective)] + ([show("text_view", cfg.text_view)] if cfg.objective == "convirt" else [])
    parts = [*first, show("lr", f"{cfg.lr:g}"), show("batch_size", batch),
             f"{total} steps = {epochs} epochs ({src['epochs']}" + (f", at least {cfg.min_steps} steps ({src['min_steps']})"
                                                                    if cfg.min_steps else "") + ")"]
    return "recipe: " + ", ".join(parts)


def epoch_line(m: dict) -> str:
    """One line per epoch: validation loss, and image->report R@5 against chance where there are reports."""
    val = "n/a" if m.get("val_loss") is None else f"{m['val_loss']:.4f}"
    line = f"epoch {m['epoch']} step {m['step']}: val loss {val}"
    if "val_i2t_r5" in m:
        line += (f", image->report R@5 {m['val_i2t_r5']:.3f} (chance {m['val_r5_chance']:.3f}, "
                 f"{m['val_retrieval_rows']} val pairs)")
    return line


# ---------------------------------------------------------------- the loop

def pretrain(cfg: PretrainConfig, reporter: Reporter | None = None) -> Path | None:
    """Train on the pairs in cfg.data; returns the finished run directory (None after --dry-run).

    Raises Interrupted (after saving a checkpoint) on SIGINT / SIGTERM. A run that fails before its first
    checkpoint leaves no folder behind.
    """
    rep = reporter or NullReporter()
    run = find_run(cfg)
    cfg = resolve_config(cfg, run)
    if cfg.accum_steps > 1 and cfg.objective == "dino":
        raise ConvirtError("--accum-steps builds a contrastive batch bigger than memory (convirt, simclr); DINO's "
                           "loss has no in-batch negatives, so it does not apply: use the --batch-size that fits, "
                           "or more GPUs with torchrun")
    device = pick_device(cfg.device)
    dist = init_distributed(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not dist.main:
        rep = NullReporter()  # one progress bar, from rank 0
    run = run or new_run(cfg, dist, device)

    need_text = cfg.objective not in IMAGE_ONLY
    if is_shard_source(cfg.data):
        train_rows, val_rows, min_side, data = prepare_shards(cfg, rep)
    else:
        train_rows, val_rows, min_side, data = prepare_rows(cfg, need_text=need_text, rep=rep)
    if cfg.dry_run:
        return dry_run(cfg, len(train_rows), dist, rep)
    created = not run.exists()
    try:
        return _train(cfg, run, train_rows, val_rows, device, dist, rep, min_side, data)
    except Interrupted:
        raise
    except BaseException:
        if created and dist.main and not (run / "metrics.jsonl").exists():  # a failed start leaves nothing behind
            shutil.rmtree(run, ignore_errors=True)
        raise


def dry_run(cfg: PretrainConfig, n_train: int, dist: Dist, rep: Reporter) -> None:
    """--dry-run: the recipe the data would get (after the data summary prepare_* printed), and nothing written."""
    per_rank = n_train // dist.world
    batch = min(cfg.batch_size * cfg.accum_steps, per_rank)
    if batch < 2:
        raise ConvirtError(f"{per_rank} training pairs per process: too few for a contrastive batch")
    total, epochs = step_budget(cfg, per_rank // batch)
    rep.note(recipe_line(cfg, total, epochs, batch * dist.world))
    rep.note("dry run: nothing written; drop --dry-run to train")


def _train(cfg: PretrainConfig, run: Path, train_rows: list[Row], val_rows: list[Row], device: torch.device,
           dist: Dist, rep: Reporter, min_side: int | None = None, data: dict | None = None) -> Path:
    torch.manual_seed(cfg.seed)
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        obj = build_objective(cfg, run, train_rows, device, dist)
    if dist.world > 1:
        torch.distributed.barrier()
        if not dist.main:  # every rank starts from rank 0's towers and tokenizer
            obj = build_objective(cfg.model_copy(update={"resume": True}), run, train_rows, device, dist)
    obj.module.to(device).train()
    if cfg.grad_checkpointing:
        obj.model.set_grad_checkpointing()
    cfg = cfg.model_copy(update={"channels_last": use_channels_last(cfg, device, obj.model.image)})
    if cfg.channels_last:
        obj.module.to(memory_format=torch.channels_last)
    if hasattr(obj, "size_warning") and (line := obj.size_warning(min_side)):
        rep.warn(line)

    train_ds = obj.dataset(train_rows, train=True, seed=cfg.seed)
    streamed = isinstance(train_ds, torch.utils.data.IterableDataset)  # shards: no sampler, resampled per epoch
    sampler = None if streamed else EpochSampler(len(train_ds), cfg.seed, shuffle=True, rank=dist.rank,
                                                 world=dist.world)
    per_rank = len(train_ds) if streamed else len(sampler.indices())
    batch_size = min(cfg.batch_size * cfg.accum_steps, per_rank)  # --accum-steps: one contrastive batch, chunked
    if batch_size < 2:
        raise ConvirtError(f"{per_rank} training pairs per process: too few for a contrastive batch")
    obj.batch_size = batch_size * dist.world
    workers = {"num_workers": cfg.num_workers, "worker_init_fn": ignore_signals if cfg.num_workers else None}
    loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, collate_fn=obj.collate, drop_last=True,
                        generator=torch.Generator(),  # keeps DataLoader seeding off the global RNG (resume replays)
                        pin_memory=device.type == "cuda", persistent_workers=False, **workers)
    if streamed:
        train_ds.epoch_samples = (per_rank // batch_size) * batch_size * dist.world  # whole batches, as from a table
    val_loader = DataLoader(obj.dataset(val_rows, train=False, seed=cfg.seed), batch_size=batch_size,
                            collate_fn=obj.collate, **workers) if len(val_rows) >= 2 else None

    steps_per_epoch = per_rank // batch_size
    total, epochs = step_budget(cfg, steps_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(0.05 * total)
    if hasattr(obj, "set_budget"):
        obj.set_budget(total, steps_per_epoch)
    groups = obj.param_groups(cfg.lr, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]

    metrics_path = run / "metrics.jsonl"
    st = _State()
    if cfg.resume:
        ck, saved, skipped = load_latest(run, obj.module)
        for path, why in skipped:
            rep.warn(f"skipped checkpoint {path.name}: {why}; resuming from {ck.name}")
        opt.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        st = _State(saved["step"], saved["epoch"], saved["batch_in_epoch"], Plateau(*saved["plateau"]),
                    saved["bad_images"], saved.get("warned_at"))
        if dist.main:
            truncate_metrics(metrics_path, st.step)  # the steps after the checkpoint are replayed
    losses = [r["loss"] for r in read_jsonl(metrics_path) if "loss" in r] if cfg.resume else []

    summary = {"status": "running", "objective": obj.name, "steps": st.step, "total_steps": total, "epochs": epochs,
               "train_pairs": len(train_rows), "val_pairs": len(val_rows), "batch_size": obj.batch_size,
               "device": str(device), "world_size": dist.world, "data": data}
    if dist.main:
        saved_cfg = cfg.model_dump(mode="json") | {"data": str(Path(cfg.data).resolve()), "sources": cfg.sources()}
        write_json(run / "config.json", saved_cfg)
        write_summary(run, summary)

    net = obj.trainable()
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    scaler = grad_scaler(device, cfg.precision)

    def checkpoint() -> Path | None:
        if not dist.main:
            return None
        return save_checkpoint(run, obj.module, {
            "step": st.step, "epoch": st.epoch, "batch_in_epoch": st.batch_in_epoch,
            "plateau": [st.plateau.scale, st.plateau.best, st.plateau.bad_epochs], "bad_images": st.bad_images,
            "warned_at": st.warned_at, "optimizer": opt.state_dict(), "rng": torch.get_rng_state()})

    rep.note(recipe_line(cfg, total, epochs, obj.batch_size))
    rep.start("pretrain", total, st.step)
    check_at = guard.check_step(total)
    last_val: dict | None = None
    t_last, n_since = time.perf_counter(), 0
    with StopOnSignal() as stop:
        while st.step < total and st.epoch < epochs and not _stopping(stop, dist, device):
            train_ds.set_epoch(st.epoch)
            if sampler is not None:
                sampler.set_epoch(st.epoch, start=st.batch_in_epoch * batch_size)
            for batch in _batches(loader, stop):
                if st.step >= total:  # the budget ran out mid-epoch
                    break
                st.bad_images += len(batch["bad"])
                st.batch_in_epoch += 1
                if batch["images"].shape[0] < 2:
                    continue
                scale = warmup_cosine(st.step, total, warmup) if cfg.schedule == "cosine" else \
                    st.plateau.scale * min(1.0, (st.step + 1) / max(1, warmup))
                for group in opt.param_groups:
                    group["lr"] = group["base_lr"] * scale
                if hasattr(obj, "on_step_start"):  # e.g. DINO's weight-decay, temperature and momentum schedules
                    obj.on_step_start(st.step, opt)
                g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + st.step) * 64 + dist.rank)
                opt.zero_grad(set_to_none=True)
                check = partial(_check_finite, step=st.step)
                if cfg.accum_steps > 1:  # GradCache: the objective backpropagates chunk by chunk
                    loss, extra = obj.loss_and_backward(net, batch, st.step, g, scaler.scale, check)
                else:
                    loss, extra = obj.loss(net, batch, st.step, g)
                    check(loss)
                    scaler.scale(loss).backward()
                if hasattr(obj, "before_update"):  # e.g. DINO's prototypes frozen for the first epoch
                    obj.before_update(st.step)
                scaler.unscale_(opt)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
                scaler.step(opt)
                scaler.update()
                st.step += 1
                extra |= obj.after_step(st.step)
                n_since += batch["images"].shape[0] * dist.world
                now = time.perf_counter()
                record = {"step": st.step, "epoch": st.epoch, "loss": loss.item(), "lr": cfg.lr * scale,
                          "samples_per_s": n_since / max(now - t_last, 1e-9)} | extra
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                t_last, n_since = now, 0
                losses.append(record["loss"])
                if dist.main:
                    append_jsonl(metrics_path, record)
                if st.step == check_at and st.warned_at is None and getattr(obj, "guard_batch", 0):
                    stuck, mean, ln_b = guard.at_start(losses, obj.guard_batch)
                    if stuck and not guard.val_learning(last_val):
                        st.warned_at = {"step": st.step, "loss": round(mean, 4)}
                        rep.warn(guard.warning(st.step, total, mean, ln_b, obj.guard_batch))
                if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
                    checkpoint()
                rep.update(st.step, f"loss {record['loss']:.4f}  {record['samples_per_s']:.1f} samples/s")
                if _stopping(stop, dist, device):
                    break
            else:  # the epoch ran to its end (or its workers were stopped by the signal)
                if stop.signum is not None:
                    break
                st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                val = obj.validate(val_loader) if val_loader is not None else {}
                if "val_loss" in val:
                    st.plateau = st.plateau.update(val["val_loss"])
                    last_val = val
                epoch_rec = {"step": st.step, "epoch": st.epoch, "val_loss": val.get("val_loss")} | val | {
                    "lr_scale": st.plateau.scale, "bad_images": st.bad_images}
                if dist.main:
                    append_jsonl(metrics_path, epoch_rec)
                rep.note(epoch_line(epoch_rec))
                checkpoint()
                continue
            break  # the step budget ran out, or a signal, mid-epoch

        if st.step < total and stop.signum is not None:
            _interrupted(cfg, run, obj, checkpoint, st, summary, stop.signum or 15, dist)

    if st.batch_in_epoch:  # stopped mid-epoch by the step budget: checkpoint so --resume can extend it
        checkpoint()
    summary |= {"status": "complete", "steps": st.step, "epochs": st.epoch, "bad_images": st.bad_images,
                "final_val_loss": (last_val or {}).get("val_loss"),
                "learning": obj.learning(losses, st.warned_at, last_val)}
    if dist.main:
        obj.module.eval()
        if cfg.channels_last:  # saved weights are plain contiguous tensors, whatever layout trained them
            obj.module.to(memory_format=torch.contiguous_format)
        obj.save(run)
        write_summary(run, summary)
        if cfg.plot:
            from convirt_cli.torchfree.plots import loss_curve

            loss_curve(read_jsonl(metrics_path), run / "loss.png", obj.loss_label,
                       title=f"{Path(cfg.model).stem} on {Path(cfg.data).name}")
        set_latest(cfg.runs_dir, run)
    if summary["learning"].get("collapsed"):
        rep.warn(f"{run} did not learn: {summary['learning']['message']}")
    bad = f", {summary['bad_images']} unreadable images skipped" if summary["bad_images"] else ""
    rep.end(f"done {summary['steps']} steps{bad}; run saved to {run}")
    if dist.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return run


def _batches(loader: DataLoader, stop: StopOnSignal):
    """The loader's batches; a worker lost to the signal that is stopping us ends the epoch quietly."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError:
            if stop.signum is not None:
                return
            raise
        yield batch


def _stopping(stop: StopOnSignal, dist: Dist, device: torch.device) -> bool:
    """Has any rank been asked to stop? Ranks agree, so they stop at the same step."""
    if dist.world == 1:
        return stop.signum is not None
    flag = torch.tensor([stop.signum or 0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item() and stop.signum is None:
        stop.signum = int(flag.item())
    return bool(flag.item())


def _interrupted(cfg, run: Path, obj: Objective, checkpoint, st: _State, summary: dict, signum: int,
                 dist: Dist) -> None:
    """Save what was learnt so far, mark the run incomplete and raise Interrupted with the resume command."""
    import signal

    ck = checkpoint()
    if dist.main:
        obj.module.eval()
        obj.save(run)  # export/embed of this run then serve its current weights, and say they are partial
        write_summary(run, summary | {"status": "interrupted", "steps": st.step, "epochs": st.epoch,
                                      "signal": signal.Signals(signum).name, "bad_images": st.bad_images})
    if dist.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    where = f" ({ck})" if ck is not None else ""
    raise Interrupted(f"{signal.Signals(signum).name} at step {st.step} of {summary['total_steps']}: checkpoint "
                      f"saved{where}. Resume with: convirt pretrain --out {run} --resume", signum)
