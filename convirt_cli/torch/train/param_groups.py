"""Optimiser parameter groups for ViTs (DINOv2): layer-wise lr decay, a smaller lr for the patch embedding, and no
weight decay on biases, norms, tokens and position embeddings."""

from __future__ import annotations

import re

from torch import nn

NO_DECAY = ("bias", "norm", "cls_token", "pos_embed", "position_embeddings", "mask_token", "reg_token",
            "register_tokens", "layer_scale", "lambda1", "lambda2", "gamma")  # DINOv2 decays the prototypes' norm
_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layer|layers)\.(\d+)\.")


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings (patch embedding, tokens), 1..depth for transformer block i-1, depth + 1 for the rest
    (final norm, heads)."""
    if m := _BLOCK.search(name):
        return int(m.group(1)) + 1
    if any(t in name for t in ("patch_embed", "embeddings", "cls_token", "pos_embed", "mask_token", "reg_token")):
        return 0
    return depth + 1


def vit_param_groups(module: nn.Module, lr: float, weight_decay: float, depth: int, layer_decay: float = 1.0,
                     patch_embed_lr_mult: float = 1.0, last_layer: set[int] = frozenset()) -> list[dict]:
    """One group per (lr scale, decayed or not, last layer or not): lr x layer_decay^(depth + 1 - layer)
    (x patch_embed_lr_mult for the patch embedding), weight decay only on matrices. Each group carries `lr_scale`
    and `wd_scale` for schedules, and `last_layer` (the parameters whose id is in `last_layer`: DINO's prototypes,
    which the loop's last_layer_lr schedule holds still at first, as DINOv2's apply_optim_scheduler does)."""
    groups: dict[tuple[float, bool, bool], dict] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        scale = layer_decay ** (depth + 1 - layer_id(name, depth))
        if "patch_embed" in name or "patch_embeddings" in name:
            scale *= patch_embed_lr_mult
        decay = p.ndim > 1 and not any(t in name for t in NO_DECAY)
        last = id(p) in last_layer
        g = groups.setdefault((scale, decay, last), {
            "params": [], "lr_scale": scale, "wd_scale": 1.0 if decay else 0.0, "last_layer": last, "lr": lr * scale,
            "weight_decay": weight_decay if decay else 0.0})
        g["params"].append(p)
    return list(groups.values())
