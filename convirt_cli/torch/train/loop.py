"""Pretraining, top to bottom, as named phases (nanoGPT's train.py; DINOv2's schedules at loop level):

    config     train/run_config   flags > CONVIRT_* > toml > the preset's recipe; --resume: the run's own settings
    data       train/data         rows or shards -> checked, split -> the objective's loaders
    set-up     set_up             the objective over a fresh model (or the run's own), on every rank and device
    optimiser  Training           AdamW over the objective's groups; the schedules (lr here, the objective's
                                  own beside it); the newest checkpoint on --resume
    one step   Training.step      schedules applied, loss (GradCache chunks under --accum-steps), backward, update
    log        Training.log       the steps' records, read from the device LOG_EVERY steps at a time (one sync)
    evaluate   Training.end_epoch validation, the plateau rule, the epoch's record
    checkpoint Training.checkpoint everything --resume needs, atomically
    finish     Training.finish    the run's weights, summary, plot, `latest`

One loop for every registered objective (torch/objectives): the loop owns the data checks, the step budget, the
schedules, checkpoints, interrupts, metrics and the run's status; the objective owns views, model and loss, and
the loop calls only the hooks `Objective` declares. It reports through a `Reporter`; the library prints nothing.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from convirt_cli.torch.data.shards import is_shard_source
from convirt_cli.torch.model import create_model, load_model, save_model
from convirt_cli.torch.objectives import Objective, Schedule, objective_class
from convirt_cli.torch.train import guard
from convirt_cli.torch.train.checkpoint import load_latest, save_checkpoint
from convirt_cli.torch.train.data import Loaders, make_loaders, prepare_rows, prepare_shards
from convirt_cli.torch.train.device import grad_scaler, pick_device
from convirt_cli.torch.train.distributed import Dist, init_distributed
from convirt_cli.torch.train.run_config import (
    find_run,
    new_run,
    recipe_line,
    resolve_config,
    shards_window,
    step_budget,
)
from convirt_cli.torch.train.schedule import Plateau, apply_optimiser_schedules, warmup_cosine
from convirt_cli.torchfree.config import PretrainConfig
from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.errors import ConvirtError, Interrupted
from convirt_cli.torchfree.files import write_json
from convirt_cli.torchfree.objectives import get_objective, list_objectives
from convirt_cli.torchfree.outputs import check_folder, folder_kind, fresh_dir, locked, mark
from convirt_cli.torchfree.registry import get_model_config, with_overrides
from convirt_cli.torchfree.report import NullReporter, Reporter
from convirt_cli.torchfree.runs import (
    append_jsonl,
    is_run_dir,
    read_jsonl,
    set_latest,
    truncate_metrics,
    write_summary,
)
from convirt_cli.torchfree.stop import StopOnSignal

# On an accelerator, steps' records stay on the device and are read LOG_EVERY steps at a time, in one sync (and
# before a checkpoint, the collapse guard, an epoch's end): the host never waits for the GPU in a step. On CPU
# every step is read at once (nothing to overlap), so a non-finite loss stops the step that made it.
LOG_EVERY = 16


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    plateau: Plateau = field(default_factory=Plateau)
    bad_images: int = 0
    warned_at: dict | None = None  # the collapse guard's warning, once


# ---------------------------------------------------------------- set-up

def build_objective(cfg: PretrainConfig, run: Path, train_rows: list[Row], device: torch.device,
                    dist: Dist) -> Objective:
    """The objective over a fresh model with the towers it declares (saved at once: what --resume rebuilds
    from), or over the run's own."""
    cls = objective_class(cfg.objective)
    if cfg.resume:
        if not (run / "model.json").is_file():
            raise ConvirtError(f"--resume: {run} holds no model to resume; drop --resume to start one")
        return cls(load_model(run), cfg, device, dist)
    base, image_weights = get_model_config(cfg.model), cfg.image_weights
    if cfg.image_init is not None:
        if not is_run_dir(cfg.image_init) or not (cfg.image_init / "image").is_dir():
            raise ConvirtError(f"--image-init {cfg.image_init}: not a finished run with an image tower")
        base = base.model_copy(update={"image": get_model_config(cfg.image_init).image})
        image_weights = cfg.image_init / "image"
    mcfg = with_overrides(cls.model_config(base), **{"image.image_size": cfg.image_size, "image.window": cfg.window,
                                                     "loss.tau": cfg.tau, "loss.lam": cfg.lam})
    texts = [r.text for r in train_rows] if isinstance(train_rows, list) else train_rows.texts()  # shards: a sample
    model = create_model(mcfg, pretrained=cfg.pretrained, texts=texts, image_weights=image_weights,
                         text_weights=cfg.text_weights)
    save_model(model, run)
    return cls(model, cfg, device, dist)


def set_up(cfg: PretrainConfig, run: Path, train_rows: list[Row], device: torch.device, dist: Dist,
           rep: Reporter, min_side: int | None) -> tuple[PretrainConfig, Objective]:
    """The objective on every rank (rank 0 builds and saves the model, the others load it), on its device, in the
    memory layout that pays there."""
    torch.manual_seed(cfg.seed)
    if dist.main:
        if cfg.resume:
            mark(run, "run")
        else:
            fresh_dir(run, "run")  # an old run in --out is replaced (outputs.check_folder allowed only that)
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
    if line := obj.size_warning(min_side):
        rep.warn(line)
    return cfg, obj


def use_channels_last(cfg: PretrainConfig, device: torch.device, tower) -> bool:
    """--channels-last as given, else where it pays: CNN image towers on CUDA (config.py)."""
    return cfg.channels_last if cfg.channels_last is not None else device.type == "cuda" and tower.convolutional


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
    """Train cfg.objective on cfg.data; returns the finished run directory (None after --dry-run).

    Raises Interrupted (after saving a checkpoint) on SIGINT / SIGTERM. A run that fails before its first
    checkpoint leaves no folder behind.
    """
    rep = reporter or NullReporter()
    run = find_run(cfg)
    cfg = resolve_config(cfg, run)
    spec = get_objective(cfg.objective)
    objective_class(spec.name)  # a class that does not implement Objective fails here, before any data is read
    if cfg.accum_steps > 1 and not spec.gradcache:
        chunked = ", ".join(n for n in list_objectives() if get_objective(n).gradcache)
        raise ConvirtError(f"--accum-steps builds one contrastive batch bigger than memory in GradCache chunks "
                           f"({chunked}); --objective {spec.name} does not split its batch: use the --batch-size "
                           "that fits, or more GPUs with torchrun")
    device = pick_device(cfg.device)
    dist = init_distributed(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not dist.main:
        rep = NullReporter()  # one progress bar, from rank 0
    run = run or new_run(cfg, dist, device)
    if dist.main and not cfg.dry_run:  # before the data is read: a refused --out is said at once
        check_folder(run, "run", "--out" if cfg.out else "--runs-dir", inputs=[cfg.data, cfg.image_init])
    if is_shard_source(cfg.data):
        train_rows, val_rows, min_side, data = prepare_shards(cfg, rep)
        cfg = shards_window(cfg, data)
    else:
        train_rows, val_rows, min_side, data = prepare_rows(cfg, need_text=spec.needs_text, rep=rep)
    if cfg.dry_run:
        return dry_run(cfg, len(train_rows), dist, rep)
    with locked(run, cfg.wait) if dist.main else nullcontext():  # one writer per run folder (rank 0 writes)
        created = not run.exists() or (not cfg.resume and folder_kind(run) == "run")  # new, or replacing a run
        try:
            return _train(cfg, run, train_rows, val_rows, device, dist, rep, min_side, data)
        except Interrupted:
            raise
        except BaseException:
            if created and dist.main and not (run / "metrics.jsonl").exists():  # a failed start leaves nothing
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
    cfg, obj = set_up(cfg, run, train_rows, device, dist, rep, min_side)
    t = Training(cfg, run, obj, make_loaders(cfg, obj, train_rows, val_rows, device, dist), device, dist, rep)
    t.start(len(train_rows), len(val_rows), data)
    with StopOnSignal() as stop:
        while t.st.step < t.total and t.st.epoch < t.epochs and not _stopping(stop, dist, device):
            if not t.run_epoch(stop):  # the step budget ran out, or a signal came, mid-epoch
                break
            t.end_epoch()
        if t.st.step < t.total and stop.signum is not None:
            t.interrupted(stop.signum or 15)
    return t.finish()


class Training:
    """One run's optimiser, schedules and progress, and the phases of its loop (`_train` calls them in order)."""

    def __init__(self, cfg: PretrainConfig, run: Path, obj: Objective, data: Loaders, device: torch.device,
                 dist: Dist, rep: Reporter):
        self.cfg, self.run, self.obj, self.data, self.device, self.dist, self.rep = cfg, run, obj, data, device, \
            dist, rep
        obj.batch_size = data.batch_size * dist.world
        self.total, self.epochs = step_budget(cfg, data.steps_per_epoch)
        groups = obj.param_groups(cfg.lr, cfg.weight_decay)
        self.params = [p for g in groups for p in g["params"]]
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        for group in self.opt.param_groups:
            group["base_lr"] = group["lr"]
        self.metrics = run / "metrics.jsonl"
        self.st, self.losses = self._restore()
        self.schedules = self._schedules()
        net = obj.trainable()
        if dist.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)
        self.net = torch.compile(net) if cfg.compile else net
        self.scaler = grad_scaler(device, cfg.precision)
        self.check_at = guard.check_step(self.total)
        self.last_val: dict | None = None
        self.t_last, self.n_since = time.perf_counter(), 0
        self.summary: dict = {}
        self.log_every = log_interval(device)
        self.pending: list[dict] = []  # records whose tensors are still on the device

    def _restore(self) -> tuple[_State, list[float]]:
        """--resume: weights, optimiser, RNG and progress from the newest readable checkpoint; the metrics logged
        after it are dropped (those steps are replayed)."""
        if not self.cfg.resume:
            return _State(), []
        ck, saved, skipped = load_latest(self.run, self.obj.module)
        for path, why in skipped:
            self.rep.warn(f"skipped checkpoint {path.name}: {why}; resuming from {ck.name}")
        try:
            self.opt.load_state_dict(saved["optimizer"])
        except ValueError as e:
            raise ConvirtError(f"{ck}: its optimiser state does not fit this version's parameter groups ({e}); "
                               "start the run again") from None
        torch.set_rng_state(saved["rng"])
        st = _State(saved["step"], saved["epoch"], saved["batch_in_epoch"], Plateau(*saved["plateau"]),
                    saved["bad_images"], saved.get("warned_at"))
        if self.dist.main:
            truncate_metrics(self.metrics, st.step)
        return st, [r["loss"] for r in read_jsonl(self.metrics) if "loss" in r]

    def _schedules(self) -> dict[str, Schedule]:
        """Every schedule of the run by name (DINOv2's build_schedulers): the loop's lr multiplier (warmup, then
        cosine or the paper's plateau rule), then the objective's own."""
        cfg, total = self.cfg, self.total
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(0.05 * total)
        if cfg.schedule == "cosine":
            lr = partial(warmup_cosine, total=total, warmup=warmup)
        else:
            def lr(step: int) -> float:
                return self.st.plateau.scale * min(1.0, (step + 1) / max(1, warmup))
        return {"lr": lr} | self.obj.schedules(total, self.data.steps_per_epoch)

    def start(self, n_train: int, n_val: int, data: dict | None) -> None:
        """The run's config and status on disk, the recipe line, the progress bar."""
        cfg = self.cfg
        self.summary = {"status": "running", "objective": cfg.objective, "steps": self.st.step,
                        "total_steps": self.total, "epochs": self.epochs, "train_pairs": n_train, "val_pairs": n_val,
                        "batch_size": self.obj.batch_size, "device": str(self.device), "world_size": self.dist.world,
                        "data": data}
        if self.dist.main:
            write_json(self.run / "config.json", cfg.model_dump(mode="json") | {
                "data": str(Path(cfg.data).resolve()), "sources": cfg.sources()})
            write_summary(self.run, self.summary)
        self.rep.note(recipe_line(cfg, self.total, self.epochs, self.obj.batch_size))
        self.rep.start("pretrain", self.total, self.st.step)

    def run_epoch(self, stop: StopOnSignal) -> bool:
        """One pass over the training data; False when it stopped before its end (the step budget ran out, or a
        signal came)."""
        st = self.st
        self.data.start_epoch(st.epoch, st.batch_in_epoch)
        for batch in _batches(self.data.train, stop):
            if st.step >= self.total:
                return False
            st.bad_images += len(batch["bad"])
            st.batch_in_epoch += 1
            if batch["images"].shape[0] < 2:
                continue
            self.log(self.step(batch))
            # ranks agree on stopping through an all-reduce (a sync): only on the steps they log
            if (self.dist.world == 1 or st.step % self.log_every == 0) and _stopping(stop, self.dist, self.device):
                return False
        return stop.signum is None  # a signal that stopped the workers ends the epoch early too

    def step(self, batch: dict) -> dict:
        """One optimisation step: the schedules' values applied, the loss (in GradCache chunks under
        --accum-steps), backward, clipping, the update, the objective's after-step. Returns the step's record."""
        cfg, obj, step = self.cfg, self.obj, self.st.step
        now = {name: f(step) for name, f in self.schedules.items()}
        apply_optimiser_schedules(self.opt.param_groups, now)
        g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 64 + self.dist.rank)
        self.opt.zero_grad(set_to_none=True)
        check = partial(_check_finite, step=step) if self.log_every == 1 else None  # else: at the flush
        if cfg.accum_steps > 1:  # GradCache: the objective backpropagates chunk by chunk
            loss, extra = obj.loss_and_backward(self.net, batch, step, g, self.scaler.scale, check)
        else:
            loss, extra = obj.loss(self.net, batch, step, g)
            if check is not None:
                check(loss)
            self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip) if cfg.grad_clip > 0 else None
        self.scaler.step(self.opt)
        self.scaler.update()
        extra |= obj.after_step(step)
        self.st.step += 1
        self.n_since += batch["images"].shape[0] * self.dist.world
        t = time.perf_counter()
        record = {"step": self.st.step, "epoch": self.st.epoch, "loss": loss.detach(), "lr": cfg.lr * now.pop("lr"),
                  "samples_per_s": self.n_since / max(t - self.t_last, 1e-9)} | now | extra
        if grad_norm is not None:
            record["grad_norm"] = grad_norm.detach()
        self.t_last, self.n_since = t, 0
        return record  # tensors stay on the device until log() reads them

    def log(self, record: dict) -> None:
        """The step's record (read with others every log_every steps) to metrics.jsonl and the reporter; the
        collapse guard half way; --checkpoint-every."""
        st, obj = self.st, self.obj
        self.pending.append(record)
        checkpoint = bool(self.cfg.checkpoint_every) and st.step % self.cfg.checkpoint_every == 0
        if st.step % self.log_every and st.step not in (self.check_at, self.total) and not checkpoint:
            return
        record = self.flush()
        if st.step == self.check_at and st.warned_at is None and obj.guard_batch:
            stuck, mean, ln_b = guard.at_start(self.losses, obj.guard_batch)
            if stuck and not guard.val_learning(self.last_val):
                st.warned_at = {"step": st.step, "loss": round(mean, 4)}
                self.rep.warn(guard.warning(st.step, self.total, mean, ln_b, obj.guard_batch))
        if checkpoint:
            self.checkpoint()
        self.rep.update(st.step, f"loss {record['loss']:.4f}  {record['samples_per_s']:.1f} samples/s")

    def flush(self) -> dict | None:
        """The pending records, read from the device in one sync, checked finite, to metrics.jsonl; -> the last."""
        records, self.pending = on_host(self.pending), []
        for r in records:
            if not math.isfinite(r["loss"]):
                raise ConvirtError(f"loss became {r['loss']} at step {r['step'] - 1}; lower --lr or raise --tau")
            self.losses.append(r["loss"])
            if self.dist.main:
                append_jsonl(self.metrics, r)
        return records[-1] if records else None

    def end_epoch(self) -> None:
        """The epoch ran to its end: validation, the plateau rule, the epoch's record, a checkpoint."""
        self.flush()
        st = self.st
        st.epoch, st.batch_in_epoch = st.epoch + 1, 0
        val = self.obj.validate(self.data.val) if self.data.val is not None else {}
        if "val_loss" in val:
            st.plateau = st.plateau.update(val["val_loss"])
            self.last_val = val
        record = {"step": st.step, "epoch": st.epoch, "val_loss": val.get("val_loss")} | val | {
            "lr_scale": st.plateau.scale, "bad_images": st.bad_images}
        if self.dist.main:
            append_jsonl(self.metrics, record)
        self.rep.note(epoch_line(record))
        self.checkpoint()

    def checkpoint(self) -> Path | None:
        if not self.dist.main:
            return None
        st = self.st
        return save_checkpoint(self.run, self.obj.module, {
            "step": st.step, "epoch": st.epoch, "batch_in_epoch": st.batch_in_epoch,
            "plateau": [st.plateau.scale, st.plateau.best, st.plateau.bad_epochs], "bad_images": st.bad_images,
            "warned_at": st.warned_at, "optimizer": self.opt.state_dict(), "rng": torch.get_rng_state()})

    def interrupted(self, signum: int) -> None:
        """Save what was learnt so far, mark the run incomplete and raise Interrupted with the resume command."""
        import signal

        self.flush()
        ck, st = self.checkpoint(), self.st
        if self.dist.main:
            self.obj.module.eval()
            self.obj.save(self.run)  # export/embed of this run then serve its current weights, and say they are partial
            write_summary(self.run, self.summary | {"status": "interrupted", "steps": st.step, "epochs": st.epoch,
                                                    "signal": signal.Signals(signum).name,
                                                    "bad_images": st.bad_images})
        if self.dist.world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        where = f" ({ck})" if ck is not None else ""
        raise Interrupted(f"{signal.Signals(signum).name} at step {st.step} of {self.total}: checkpoint saved{where}. "
                          f"Resume with: convirt pretrain --out {self.run} --resume", signum)

    def finish(self) -> Path:
        """The run's weights (the objective decides which), its summary and loss plot, and `latest` pointing at it."""
        self.flush()
        cfg, st, obj, run = self.cfg, self.st, self.obj, self.run
        if st.batch_in_epoch:  # stopped mid-epoch by the step budget: checkpoint so --resume can extend it
            self.checkpoint()
        summary = self.summary | {"status": "complete", "steps": st.step, "epochs": st.epoch,
                                  "bad_images": st.bad_images, "final_val_loss": (self.last_val or {}).get("val_loss"),
                                  "learning": obj.learning(self.losses, st.warned_at, self.last_val)}
        if self.dist.main:
            obj.module.eval()
            if cfg.channels_last:  # saved weights are plain contiguous tensors, whatever layout trained them
                obj.module.to(memory_format=torch.contiguous_format)
            obj.save(run)
            write_summary(run, summary)
            if cfg.plot:
                from convirt_cli.torchfree.plots import loss_curve

                loss_curve(read_jsonl(self.metrics), run / "loss.png", obj.loss_label,
                           title=f"{Path(cfg.model).stem} on {Path(cfg.data).name}")
            set_latest(cfg.runs_dir, run)
        if summary["learning"].get("collapsed"):
            self.rep.warn(f"{run} did not learn: {summary['learning']['message']}")
        bad = f", {summary['bad_images']} unreadable images skipped" if summary["bad_images"] else ""
        self.rep.end(f"done {summary['steps']} steps{bad}; run saved to {run}")
        if self.dist.world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        return run


def log_interval(device: torch.device) -> int:
    """Steps whose records are read from the device at once: 1 on CPU, LOG_EVERY on an accelerator."""
    return 1 if device.type == "cpu" else LOG_EVERY


def on_host(records: list[dict]) -> list[dict]:
    """Records with their tensor values (scalars, on any device) as Python floats: one transfer, one sync."""
    where = [(i, k) for i, r in enumerate(records) for k, v in r.items() if isinstance(v, torch.Tensor)]
    if not where:
        return records
    first = records[where[0][0]][where[0][1]].device
    values = torch.stack([records[i][k].detach().float().reshape(()).to(first) for i, k in where]).tolist()
    out = [dict(r) for r in records]
    for (i, k), v in zip(where, values):
        out[i][k] = v
    return out


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not math.isfinite(loss.item()):
        raise ConvirtError(f"loss became {loss.item()} at step {step}; lower --lr or raise --tau")


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
