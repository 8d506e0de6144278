"""KoLeo (Sablayrolles et al. 2019; DINOv2's dinov2/loss/koleo_loss.py): the Kozachenko-Leonenko differential
entropy estimator, -mean_i log(distance from x_i to its nearest other row) on L2-normalised rows. Minimising it
spreads a batch of features out. DINOv2 applies it to each global crop's [CLS] tokens separately (never between
two crops of the same image) and adds the terms (losses/dinov2.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """[N, D] -> scalar -mean_i log(min_{j != i} ||x_i - x_j|| + eps), rows L2-normalised first."""
    x = F.normalize(x.float(), dim=-1, eps=eps)
    dist = torch.cdist(x, x)
    dist = dist + torch.eye(len(x), device=x.device, dtype=x.dtype) * 1e9  # a row is not its own neighbour
    return -torch.log(dist.min(1).values + eps).mean()
