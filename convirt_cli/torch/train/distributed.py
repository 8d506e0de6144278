"""torchrun support: process group from the environment, gather features with gradients."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class _AllGather(torch.autograd.Function):
    """Equal-sized all_gather whose backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather_with_grad(x: torch.Tensor, d: Dist) -> tuple[torch.Tensor, int]:
    """[b_r, k] per rank -> ([sum b_r, k] in rank order, this rank's offset); gradients flow back.

    Ranks may hold different b_r (a batch loses unreadable images), so pad to the largest, then trim.
    """
    if d.world == 1:
        return x, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(d.world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s) for s in sizes]
    big = max(sizes)
    gathered = _AllGather.apply(torch.nn.functional.pad(x, (0, 0, 0, big - x.shape[0])))
    parts = [gathered[r * big: r * big + n] for r, n in enumerate(sizes)]
    return torch.cat(parts, dim=0), sum(sizes[: d.rank])


def all_reduce_mean(value: float, d: Dist, device: torch.device) -> float:
    if d.world == 1:
        return value
    t = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / d.world


def rank0_time(d: Dist, device: torch.device) -> float:
    """Rank 0's clock on every rank: what a new run's name is stamped with, so that all ranks name the same folder
    (each rank's own clock may have ticked past a second by the time it gets here)."""
    now = time.time()
    if d.world == 1:
        return now
    t = torch.tensor([now], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())
