"""The teacher's targets: centred and sharpened distributions over the prototypes (DINO and DINOv2).

Centring keeps the teacher from collapsing: classic DINO subtracts an EMA of the teacher logits before
softmax(. / tau_t); DINOv2 replaces it by a few Sinkhorn-Knopp iterations, which make every prototype equally used
over the batch (dinov2/loss/dino_clstoken_loss.py, sinkhorn_knopp_teacher).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def centered_probs(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """Classic DINO centring and sharpening: softmax((t - c) / tau_t). [N, K], [1, K] -> [N, K]."""
    return F.softmax((teacher_logits.float() - center) / temp, dim=-1)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """EMA of the batch mean of teacher logits (all-reduced by the caller under torchrun)."""
    return center * momentum + teacher_logits.float().mean(0, keepdim=True) * (1 - momentum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temp: float, iterations: int = 3,
                   world_sum=None, world_max=None) -> torch.Tensor:
    """DINOv2's centring: Q = exp(t / tau_t), alternately normalised so that every prototype (column) carries 1/K
    of the batch's mass and every sample (row) 1/N; returned scaled so each row sums to 1. [N, K] -> [N, K].

    `world_sum(tensor)` / `world_max(tensor)` all-reduce over ranks under torchrun (the batch is then the global
    batch). The logits are shifted by their global maximum before exp: Q is normalised by its global sum at once,
    so the shift cancels exactly, and a trained prototype norm (DINOv2 trains it) cannot overflow exp."""
    reduce = world_sum or (lambda x: x)
    top = teacher_logits.float().max()
    top = world_max(top) if world_max is not None else top
    q = torch.exp((teacher_logits.float() - top) / temp)
    n = reduce(torch.tensor(q.shape[0], device=q.device, dtype=q.dtype))
    k = q.shape[1]
    q = q / reduce(q.sum())
    for _ in range(iterations):
        q = q / reduce(q.sum(0, keepdim=True)) / k  # columns: 1/K each
        q = q / q.sum(1, keepdim=True) / n  # rows: 1/N each
    return q * n
