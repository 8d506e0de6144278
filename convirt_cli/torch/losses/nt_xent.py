"""NT-Xent (SimCLR, Chen et al. 2020): InfoNCE over the 2B views of B images; each view's positive is its image's
other view, the other 2B - 2 views are negatives; cosine similarity / tau."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temp: float = 0.1) -> torch.Tensor:
    """z1, z2 [B, D] (the two views of each image, any scale) -> scalar, the mean over the 2B views."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    b = z1.shape[0]
    sim = z @ z.T / temp
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)
