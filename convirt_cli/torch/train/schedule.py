"""Learning-rate schedules as pure functions of the step (nanoGPT style), plus the paper's plateau rule."""

from __future__ import annotations

import math
from dataclasses import dataclass


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr: linear warmup to 1, then cosine decay to min_ratio at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Plateau:
    """ConVIRT decays the lr by `factor` when the validation loss stops improving for `patience` epochs."""

    scale: float = 1.0
    best: float = math.inf
    bad_epochs: int = 0

    def update(self, val_loss: float, factor: float = 0.5, patience: int = 3) -> Plateau:
        if val_loss < self.best - 1e-4:
            return Plateau(self.scale, val_loss, 0)
        if self.bad_epochs + 1 >= patience:
            return Plateau(self.scale * factor, self.best, 0)
        return Plateau(self.scale, self.best, self.bad_epochs + 1)


def cosine_ramp(step: int, total: int, start: float, end: float) -> float:
    """start at step 0 -> end at `total` along a half cosine (DINO's teacher momentum 0.992 -> 1, DINOv2's weight
    decay 0.04 -> 0.4)."""
    progress = min(1.0, max(0.0, step / max(1, total)))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def linear_warmup(step: int, warmup: int, start: float, end: float) -> float:
    """start -> end linearly over `warmup` steps, then end (DINO's teacher temperature 0.04 -> 0.07)."""
    if step >= warmup:
        return end
    return start + (end - start) * step / max(1, warmup)


def apply_optimiser_schedules(groups: list[dict], now: dict[str, float]) -> None:
    """DINOv2's apply_optim_scheduler: each parameter group's lr is its base lr x now["lr"] (x now["last_layer_lr"]
    for a group marked last_layer), its weight decay now["weight_decay"] x its wd_scale when that is scheduled."""
    for g in groups:
        g["lr"] = g["base_lr"] * now["lr"] * (now.get("last_layer_lr", 1.0) if g.get("last_layer") else 1.0)
        if "weight_decay" in now:
            g["weight_decay"] = now["weight_decay"] * g.get("wd_scale", 1.0)
