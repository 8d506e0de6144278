"""What each --init builds: a run's image tower (any pretraining objective), a preset's (fresh or hub weights), or
`random` (the first run's architecture untrained: the fair baseline). Its preprocessing comes with it: a run's
window is the run's own (a --window that disagrees is an error), an untrained preset takes --window."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from convirt_cli.torch.towers import ImageTower
from convirt_cli.torchfree.config import FinetuneConfig
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.preprocess import check_flag
from convirt_cli.torchfree.registry import ImageTowerConfig, get_model_config
from convirt_cli.torchfree.runs import is_run_dir, latest_run


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


def init_image_config(spec: str, model: str, image_size: int | None, window: str | None = None) -> ImageTowerConfig:
    """The image tower config an init builds (a run's model.json image section, or the preset's) at --image-size.
    A run's window stays its own; a preset (untrained, or trained on other pixels) takes --window when given."""
    source = model if spec == "random" else spec
    cfg = get_model_config(source).image
    if is_run_dir(Path(source)):
        check_flag("--window", window, cfg.window, f"run {source}" + (" (`random` copies its tower)"
                                                                       if spec == "random" else ""))
    elif window is not None:
        cfg = cfg.model_copy(update={"window": window})
    return cfg.model_copy(update={"image_size": image_size}) if image_size else cfg


def build_tower(spec: str, model: str, pretrained: bool, image_size: int | None, seed: int,
                window: str | None = None) -> ImageTower:
    """A run (any pretraining objective): its image tower only; a preset: fresh (or hub) weights."""
    cfg = init_image_config(spec, model, image_size, window)
    torch.manual_seed(seed)  # `random` inits are reproducible
    if is_run_dir(Path(spec)):
        if not (Path(spec) / "image").exists():
            raise ConvirtError(f"{spec}: run has no image/ tower yet; let `convirt pretrain` finish first")
        return ImageTower(cfg, local_dir=Path(spec) / "image")
    return ImageTower(cfg, pretrained=pretrained and spec != "random")


@dataclass
class Init:
    spec: str  # a run directory, a preset, `random` (`latest` resolved)
    name: str  # its row in the table
    image: ImageTowerConfig  # the tower it builds, its preprocessing included


def resolve_inits(cfg: FinetuneConfig) -> tuple[list[Init], str]:
    """The inits, checked before any image is decoded, and what `random` builds."""
    specs = [resolve_init(s, cfg.runs_dir) for s in cfg.init]
    baseline = random_model(cfg, specs)
    images = [init_image_config(s, baseline, cfg.image_size, cfg.window) for s in specs]
    names = [init_label(s, baseline, cfg.pretrained) for s in specs]
    if len(set(names)) < len(names):  # two runs with the same folder name: show the paths as given
        names = specs
    return [Init(s, n, im) for s, n, im in zip(specs, names, images)], baseline
