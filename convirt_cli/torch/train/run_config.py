"""A run's directory and the config it trains with: flags > CONVIRT_* > toml > the preset's recipe (the preset:
--model, else the objective's default); on --resume the run's own settings, its preprocessing unchangeable;
the step budget and the one recipe line that says where each setting came from."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from convirt_cli.torch.train.distributed import Dist, rank0_time
from convirt_cli.torchfree.config import PretrainConfig, apply_recipe
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import read_json
from convirt_cli.torchfree.objectives import get_objective
from convirt_cli.torchfree.preprocess import check_flag
from convirt_cli.torchfree.registry import get_model_config
from convirt_cli.torchfree.runs import RUN_MODEL_FILE, new_run_name


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
    user's settings (the preset: --model, else the objective's default). A run never silently changes recipe
    between its start and its resume."""
    if cfg.resume:
        return _resumed(cfg, run)
    if cfg.data is None:
        raise ConvirtError("no DATA given: `convirt pretrain DATA` (a folder, or a CSV/JSONL table of image,text)")
    spec = get_objective(cfg.objective)
    if spec.default_model and "model" not in cfg.model_fields_set:
        cfg = cfg.updated({"model": spec.default_model}, f"default for --objective {spec.name}")
    preset = get_model_config(cfg.model)
    recipe = dict(preset.train)
    if cfg.image_init is not None:  # the image tower, its input size and window come from that run
        recipe = {k: v for k, v in recipe.items() if k not in ("image_size", "window")}
    try:
        return apply_recipe(cfg, recipe, f"preset {preset.name}")
    except ValueError as e:
        raise ConvirtError(f"preset '{preset.name}': its train recipe is invalid ({e}); fix the preset") from None


def _resumed(cfg: PretrainConfig, run: Path) -> PretrainConfig:
    """The run's config.json under the settings given now; its preprocessing (window, input size) is the run's."""
    saved_file = run / "config.json"
    if not saved_file.is_file():
        raise ConvirtError(f"--resume: {run} holds no run to resume (no config.json); drop --resume to start one")
    saved = read_json(saved_file, "delete the run and start again")
    saved.pop("sources", None)
    mine = {k: getattr(cfg, k) for k in cfg.model_fields_set}
    if (run / RUN_MODEL_FILE).is_file():
        image = get_model_config(run).image
        check_flag("--window", mine.get("window"), image.window, f"run {run}")
        check_flag("--image-size", mine.get("image_size"), image.image_size, f"run {run}")
    try:
        merged = PretrainConfig.model_validate({k: v for k, v in saved.items() if k in PretrainConfig.model_fields}
                                               | mine | {"resume": True, "out": run})
    except ValueError as e:
        raise ConvirtError(f"{saved_file}: cannot resume with these settings ({e})") from None
    return merged.with_sources({k: "run" for k in saved} | {k: v for k, v in cfg.sources().items() if k in mine})


def shards_window(cfg: PretrainConfig, data: dict) -> PretrainConfig:
    """Shards hold pixels windowed when they were written: a new run on them takes that window (its export then
    windows raw files the same way); another --window is an error."""
    stored = data.get("window")
    if cfg.resume or stored is None or cfg.window == stored:
        return cfg
    if cfg.window is not None:
        raise ConvirtError(f"--window {cfg.window}: these shards were windowed with {stored} when written, and a "
                           "run on them keeps that window; drop --window (or pass it to `convirt shard`)")
    return cfg.updated({"window": stored}, "shards")


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

    text = [show("text_view", cfg.text_view)] if get_objective(cfg.objective).needs_text else []
    parts = [show("objective", cfg.objective), *text, show("lr", f"{cfg.lr:g}"), show("batch_size", batch),
             f"{total} steps = {epochs} epochs ({src['epochs']}" + (f", at least {cfg.min_steps} steps ({src['min_steps']})"
                                                                    if cfg.min_steps else "") + ")"]
    return "recipe: " + ", ".join(parts)
