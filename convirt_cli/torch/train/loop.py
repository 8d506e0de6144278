"""ConVIRT pretraining, top to bottom: data -> model -> AdamW loop -> checkpoints -> run directory.

The loop reports through a `Reporter` (the CLI draws a rich bar with it); the library prints nothing.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import DataLoader

from convirt_cli.torch.data.dataset import Collate, EpochSampler, PairDataset
from convirt_cli.torch.data.transforms import augment, to_model_input
from convirt_cli.torch.losses import convirt_loss
from convirt_cli.torch.model import ConVIRT, create_model, load_model, save_model
from convirt_cli.torch.train.checkpoint import last_checkpoint, load_checkpoint, save_checkpoint
from convirt_cli.torch.train.distributed import all_reduce_mean, gather_with_grad, init_distributed
from convirt_cli.torch.train.schedule import Plateau, warmup_cosine
from convirt_cli.torchfree.config import PretrainConfig
from convirt_cli.torchfree.data.readers import read_rows
from convirt_cli.torchfree.data.split import split_rows
from convirt_cli.torchfree.data.validate import Validation, validate_rows
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import write_json
from convirt_cli.torchfree.registry import get_model_config, with_overrides
from convirt_cli.torchfree.runs import append_jsonl, new_run_name, read_jsonl, set_latest


class Reporter(Protocol):
    def data_summary(self, v: Validation, splits: dict[str, int]) -> None: ...
    def start(self, total_steps: int, first_step: int) -> None: ...
    def step(self, step: int, metrics: dict) -> None: ...
    def epoch(self, metrics: dict) -> None: ...
    def end(self, run: Path, summary: dict) -> None: ...


class NullReporter:
    def data_summary(self, v, splits): pass
    def start(self, total_steps, first_step): pass
    def step(self, step, metrics): pass
    def epoch(self, metrics): pass
    def end(self, run, summary): pass


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConvirtError("--device cuda but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision on CPU (CPU bf16 is slower than fp32 on most machines)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_inputs(model: ConVIRT, batch: dict, device: torch.device, g: torch.Generator | None):
    """uint8 batch -> standardised image tensor (augmented when a generator is given), token tensors."""
    cfg = model.cfg.image
    images = batch["images"].to(device, non_blocking=True)
    x = augment(images, g) if g is not None else images
    return (to_model_input(x, cfg.mean, cfg.std, cfg.in_chans),
            batch["input_ids"].to(device, non_blocking=True), batch["attention_mask"].to(device, non_blocking=True))


@torch.no_grad()
def validation_loss(model: ConVIRT, loader: DataLoader, device: torch.device) -> float | None:
    """Mean ConVIRT loss over validation batches: whole reports, no augmentation."""
    model.eval()
    losses = []
    for batch in loader:
        if batch["images"].shape[0] < 2:
            continue
        x, ids, mask = model_inputs(model, batch, device, None)
        with autocast(device):
            v, u = model(x, ids, mask)
        losses.append(float(convirt_loss(v, u, model.cfg.loss.tau, model.cfg.loss.lam)))
    model.train()
    return sum(losses) / len(losses) if losses else None


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    plateau: Plateau = field(default_factory=Plateau)
    bad_images: int = 0


def _run_dir(cfg: PretrainConfig) -> Path:
    if cfg.out is not None:
        return cfg.out
    if cfg.resume:  # the run whose last checkpoint is newest
        pointers = sorted(cfg.runs_dir.glob("*/checkpoints/last"), key=lambda p: p.stat().st_mtime)
        if not pointers:
            raise ConvirtError(f"--resume: no run with a checkpoint in {cfg.runs_dir}/; pass --out RUN_DIR")
        return pointers[-1].parent.parent
    return cfg.runs_dir / (cfg.name or new_run_name(cfg.model))


def _build_model(cfg: PretrainConfig, run: Path, train_texts: list[str]) -> ConVIRT:
    if cfg.resume:
        if not (run / "model.json").is_file():
            raise ConvirtError(f"--resume: {run} holds no run to resume; drop --resume to start one")
        return load_model(run)
    mcfg = with_overrides(get_model_config(cfg.model), **{
        "image.image_size": cfg.image_size, "loss.tau": cfg.tau, "loss.lam": cfg.lam})
    model = create_model(mcfg, pretrained=cfg.pretrained, texts=train_texts,
                         image_weights=cfg.image_weights, text_weights=cfg.text_weights)
    save_model(model, run)  # the initial towers + tokenizer: what --resume rebuilds from
    return model


def pretrain(cfg: PretrainConfig, reporter: Reporter | None = None) -> Path:
    """Train ConVIRT on the pairs in cfg.data; returns the finished run directory."""
    rep = reporter or NullReporter()
    device = pick_device(cfg.device)
    dist_ = init_distributed(device)
    if dist_.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist_.local_rank)
        torch.cuda.set_device(device)

    if not dist_.main:
        rep = NullReporter()  # one progress bar, from rank 0
    rows = read_rows(cfg.data, cfg.image_col, cfg.text_col)
    checked = validate_rows(rows, need_text=True, strict=cfg.strict)
    splits = split_rows(checked.usable, cfg.val_fraction, 0.0, cfg.split_col, cfg.patient_col, cfg.seed)
    train_rows, val_rows = splits["train"], splits["val"]
    rep.data_summary(checked, {k: len(v) for k, v in splits.items()})
    if len(train_rows) < 2:
        raise ConvirtError(f"only {len(train_rows)} training pairs after the split; need at least 2")

    run = _run_dir(cfg)
    torch.manual_seed(cfg.seed)
    if dist_.main:
        created = not run.exists()
        run.mkdir(parents=True, exist_ok=True)
        (cfg.runs_dir).mkdir(parents=True, exist_ok=True)
        try:
            model = _build_model(cfg, run, [r.text for r in train_rows])
        except BaseException:
            if created:  # e.g. weights that cannot be downloaded: leave no empty run behind
                shutil.rmtree(run, ignore_errors=True)
            raise
        write_json(run / "config.json", cfg.model_dump(mode="json"))
    if dist_.world > 1:
        torch.distributed.barrier()
        if not dist_.main:
            model = load_model(run)  # every rank starts from rank 0's towers and tokenizer
    model.to(device).train()
    mcfg = model.cfg

    size = mcfg.image.image_size
    collate = Collate(model.tokenizer, mcfg.text.max_length)
    train_ds = PairDataset(train_rows, size, sample_sentences=cfg.text_view == "sentence", seed=cfg.seed)
    sampler = EpochSampler(len(train_ds), cfg.seed, shuffle=True, rank=dist_.rank, world=dist_.world)
    per_rank = len(sampler.indices())
    batch_size = min(cfg.batch_size, per_rank)
    loader_gen = torch.Generator()  # keeps DataLoader seeding off the global RNG (dropout replays on resume)
    loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=cfg.num_workers, drop_last=True, generator=loader_gen,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    val_loader = DataLoader(PairDataset(val_rows, size, sample_sentences=False), batch_size=batch_size,
                            collate_fn=collate, num_workers=cfg.num_workers) if len(val_rows) >= 2 else None

    steps_per_epoch = per_rank // batch_size
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(0.05 * total)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    st = _State()
    if cfg.resume:
        ck = last_checkpoint(run)
        if ck is None:
            raise ConvirtError(f"--resume: {run} has no checkpoint yet; start again without --resume")
        saved = load_checkpoint(ck, model)
        opt.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        st = _State(saved["step"], saved["epoch"], saved["batch_in_epoch"],
                    Plateau(*saved["plateau"]), saved["bad_images"])
    net = model
    if dist_.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint() -> None:
        if dist_.main:
            save_checkpoint(run, model, {
                "step": st.step, "epoch": st.epoch, "batch_in_epoch": st.batch_in_epoch,
                "plateau": [st.plateau.scale, st.plateau.best, st.plateau.bad_epochs],
                "bad_images": st.bad_images, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
            })

    metrics_path = run / "metrics.jsonl"
    rep.start(total, st.step)
    tau, lam = mcfg.loss.tau, mcfg.loss.lam
    t_last, n_since = time.perf_counter(), 0
    while st.step < total and st.epoch < cfg.epochs:
        train_ds.set_epoch(st.epoch)
        sampler.set_epoch(st.epoch, start=st.batch_in_epoch * batch_size)
        for batch in loader:
            if st.step >= total:
                break
            st.bad_images += len(batch["bad"])
            st.batch_in_epoch += 1
            if batch["images"].shape[0] < 2:
                continue
            scale = warmup_cosine(st.step, total, warmup) if cfg.schedule == "cosine" else \
                st.plateau.scale * min(1.0, (st.step + 1) / max(1, warmup))
            for group in opt.param_groups:
                group["lr"] = cfg.lr * scale
            g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + st.step) * 64 + dist_.rank)
            x, ids, mask = model_inputs(model, batch, device, g)
            with autocast(device):
                v, u = net(x, ids, mask)
            v_all, offset = gather_with_grad(v, dist_)
            u_all, _ = gather_with_grad(u, dist_)
            loss = convirt_loss(v, u, tau, lam, v_all=v_all, u_all=u_all, offset=offset)
            if not math.isfinite(loss.item()):
                raise ConvirtError(f"loss became {loss.item()} at step {st.step}; lower --lr or raise --tau")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
            opt.step()
            st.step += 1
            n_since += x.shape[0] * dist_.world
            now = time.perf_counter()
            record = {"step": st.step, "epoch": st.epoch, "loss": loss.item(), "lr": cfg.lr * scale,
                      "samples_per_s": n_since / max(now - t_last, 1e-9)}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            t_last, n_since = now, 0
            if dist_.main:
                append_jsonl(metrics_path, record)
            if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
                checkpoint()
            rep.step(st.step, record)
        else:  # the epoch ran to its end
            st.epoch, st.batch_in_epoch = st.epoch + 1, 0
            val = validation_loss(model, val_loader, device) if val_loader is not None else None
            if val is not None:
                val = all_reduce_mean(val, dist_, device)
                st.plateau = st.plateau.update(val)
            epoch_rec = {"step": st.step, "epoch": st.epoch, "val_loss": val, "lr_scale": st.plateau.scale,
                         "bad_images": st.bad_images}
            if dist_.main:
                append_jsonl(metrics_path, epoch_rec)
            rep.epoch(epoch_rec)
            checkpoint()
            continue
        break  # max_steps reached mid-epoch

    if st.batch_in_epoch:  # stopped mid-epoch by --max-steps: checkpoint so --resume can extend it
        checkpoint()
    summary = {"steps": st.step, "epochs": st.epoch, "bad_images": st.bad_images,
               "train_pairs": len(train_rows), "val_pairs": len(val_rows), "device": str(device),
               "world_size": dist_.world}
    if dist_.main:
        model.eval()
        save_model(model, run)
        records = read_jsonl(metrics_path)
        final_val = next((r["val_loss"] for r in reversed(records) if r.get("val_loss") is not None), None)
        summary["final_val_loss"] = final_val
        write_json(run / "summary.json", summary)
        if cfg.plot:
            from convirt_cli.torchfree.plots import loss_curve

            loss_curve(records, run / "loss.png", title=f"{mcfg.name} on {Path(cfg.data).name}")
        set_latest(cfg.runs_dir, run)
    rep.end(run, summary)
    if dist_.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return run
