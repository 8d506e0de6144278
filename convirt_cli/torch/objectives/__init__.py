"""Pretraining objectives behind one declared interface that the training loop (torch/train/loop.py) calls.

An objective decides what differs between ConVIRT, DINO and SimCLR: the towers it trains, the views a dataset
yields, the model's parameter groups, its schedules, the loss of a batch, what validation measures, and what the
run saves. The loop owns everything else: data checks, the step budget, the lr schedule, checkpoints,
interrupts, metrics, plots. What the run must know before a model exists (needs text? GradCache chunks? default
preset?) is the objective's registry entry (convirt_cli/torchfree/objectives.py).

Every objective subclasses `Objective`; the loop calls only what `Objective` declares (never hasattr). A class
is checked when it is registered with `@register(...)` or first loaded by name: a public method that is not one of
the hooks (a misspelt `on_step_strat`) is an error, not a hook that silently never runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from convirt_cli.torchfree.config import PretrainConfig
from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.objectives import ObjectiveSpec, get_objective, register_objective
from convirt_cli.torchfree.registry import ModelConfig

Schedule = Callable[[int], float]  # a pure function of the step (train/schedule.py)
# schedules the loop applies to the optimiser itself (DINOv2's apply_optim_scheduler); any other an objective
# declares is its own (DINO's teacher temperature, momentum), and every value is logged with the step
OPTIMISER_SCHEDULES = ("weight_decay", "last_layer_lr")


class Objective:
    """The hooks the loop calls. Required ones raise NotImplementedError here; the rest have a default."""

    loss_label: str = "loss"  # what the loss plot's y axis says
    guard_batch: int = 0  # the collapse guard's ln(this) (contrastive: the candidates per row); 0: no guard
    collate: Callable[[list[dict]], dict]  # set in __init__: the DataLoader's collate_fn

    def __init__(self, model: Any, cfg: PretrainConfig, device: torch.device, dist: Any):
        self.model, self.cfg, self.device, self.dist = model, cfg, device, dist
        self.module: torch.nn.Module = model  # every weight a checkpoint holds (towers, heads; a teacher, centres)
        self.batch_size = cfg.batch_size * dist.world  # the global batch the loss sees; the loop sets the real one

    @classmethod
    def model_config(cls, base: ModelConfig) -> ModelConfig:
        """The towers this objective trains, from the preset's: by default the image tower alone."""
        return base.model_copy(update={"text": None, "projection": None})

    # ---------------------------------------------------------------- required
    def dataset(self, rows: list[Row], train: bool, seed: int) -> Dataset:
        raise NotImplementedError

    def trainable(self) -> torch.nn.Module:  # what DDP wraps and the optimiser updates
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        raise NotImplementedError

    def loss(self, net: torch.nn.Module, batch: dict, step: int, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def validate(self, loader: DataLoader) -> dict:
        raise NotImplementedError

    def learning(self, losses: list[float], warned_at: dict | None, val: dict | None) -> dict:
        raise NotImplementedError

    def save(self, run: Path) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- optional
    def size_warning(self, min_side: int | None) -> str | None:
        """One line when the data's smallest image is too small for this objective's views."""
        return None

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, Schedule]:
        """Schedules over the run, by name (OPTIMISER_SCHEDULES the loop applies; others are the objective's)."""
        return {}

    def after_step(self, step: int) -> dict:
        """After the optimiser's update of step `step` (e.g. an EMA teacher); returns metrics to log."""
        return {}

    def loss_and_backward(self, net: torch.nn.Module, batch: dict, step: int, g: torch.Generator,
                          scale: Callable | None = None, check: Callable | None = None) -> tuple[torch.Tensor, dict]:
        """--accum-steps K (objectives registered with gradcache=True): the loss of the whole batch, backpropagated
        chunk by chunk (GradCache), so the gradients are those of the batch at once."""
        raise NotImplementedError


HOOKS = frozenset(n for n in dir(Objective) if not n.startswith("_"))
REQUIRED = ("dataset", "trainable", "param_groups", "loss", "validate", "learning", "save")


def check_objective_class(cls: type, spec: ObjectiveSpec) -> type[Objective]:
    """`cls` implements Objective as `spec` declares it, or a one-line ConvirtError saying what is wrong."""
    where = f"objective '{spec.name}' ({getattr(cls, '__qualname__', cls)})"
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ConvirtError(f"{where}: not a subclass of convirt_cli.torch.objectives.Objective")
    own = {n for k in cls.__mro__ if k not in (Objective, object) for n in vars(k) if not n.startswith("_")}
    unknown = sorted(own - HOOKS)
    if unknown:
        raise ConvirtError(f"{where}: {', '.join(unknown)} is not an Objective hook, so the loop would never call it "
                           f"(hooks: {', '.join(sorted(HOOKS))}); a helper's name starts with '_'")
    missing = [n for n in REQUIRED if getattr(cls, n) is getattr(Objective, n)]
    if missing:
        raise ConvirtError(f"{where}: does not define {', '.join(missing)}")
    chunks = cls.loss_and_backward is not Objective.loss_and_backward
    if chunks != spec.gradcache:
        raise ConvirtError(f"{where}: registered with gradcache={spec.gradcache} but "
                           f"{'defines' if chunks else 'does not define'} loss_and_backward")
    return cls


def register(name: str, *, needs_text: bool, gradcache: bool = False, default_model: str | None = None,
             about: str = "") -> Callable[[type], type]:
    """Class decorator (timm's @register_model): check the class, then make `--objective NAME` train it."""
    def wrap(cls: type) -> type:
        spec = ObjectiveSpec(name, cls, needs_text, gradcache, default_model, about)
        check_objective_class(cls, spec)  # a wrong class never becomes a name
        register_objective(spec)
        return cls
    return wrap


def objective_class(name: str) -> type[Objective]:
    """The class registered as `name`, imported if named by path, checked against Objective."""
    spec = get_objective(name)
    cls = spec.target
    if isinstance(cls, str):
        module, _, attr = cls.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    return check_objective_class(cls, spec)
