"""Token pooling as pure functions (ConVIRT max-pools the text encoder's token outputs)."""

from __future__ import annotations

import torch


def masked_max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H], [B, T] -> [B, H]: max over real tokens; padding can never win."""
    fill = torch.finfo(hidden.dtype).min
    return hidden.masked_fill(~mask.bool().unsqueeze(-1), fill).amax(dim=1)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H], [B, T] -> [B, H]: mean over real tokens."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "max":
        return masked_max(hidden, mask)
    if how == "mean":
        return masked_mean(hidden, mask)
    if how == "cls":
        return hidden[:, 0]
    raise ValueError(f"unknown pooling {how!r}")
