"""Signs of a collapsed DINO teacher: one prototype for everything, or the same flat distribution for every image."""

from __future__ import annotations

import torch


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean per-row entropy (nats) of probability rows [N, K]: 0 when every row is one-hot, log K when uniform."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()


def prototypes_in_use(probs: torch.Tensor) -> torch.Tensor:
    """Fraction of the K prototypes that are some row's most likely one (collapse drives this to 1/K), as a
    scalar tensor on probs' device (no host sync: the training loop reads it when it logs)."""
    used = torch.zeros(probs.shape[-1], device=probs.device).index_fill_(0, probs.argmax(-1), 1.0)
    return used.mean()
