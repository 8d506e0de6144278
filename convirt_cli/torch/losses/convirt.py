"""ConVIRT's bidirectional InfoNCE (Zhang et al. 2020, eqs. 2-4).

For pair i with image v_i and text u_i, and <a, b> the cosine similarity:
  l(v->u)_i = -log exp(<v_i, u_i>/tau) / sum_k exp(<v_i, u_k>/tau)
  l(u->v)_i = -log exp(<u_i, v_i>/tau) / sum_k exp(<u_i, v_k>/tau)
  L = mean_i [ lam * l(v->u)_i + (1 - lam) * l(u->v)_i ]
At lam = 0.5 it equals CLIP's symmetric loss with logit scale 1/tau.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def convirt_loss_terms(
    v: torch.Tensor, u: torch.Tensor, tau: float,
    v_all: torch.Tensor | None = None, u_all: torch.Tensor | None = None, offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair l(v->u), l(u->v), each [b], for rows v, u [b, d] (any scale; cosine is taken here).

    Under torchrun the negatives are the whole global batch: v_all, u_all [N, d] gathered from every
    rank, and this rank's pairs sit at rows offset..offset+b of them.
    """
    v, u = F.normalize(v.float(), dim=-1), F.normalize(u.float(), dim=-1)
    v_all = v if v_all is None else F.normalize(v_all.float(), dim=-1)
    u_all = u if u_all is None else F.normalize(u_all.float(), dim=-1)
    target = torch.arange(v.shape[0], device=v.device) + offset
    return (F.cross_entropy(v @ u_all.T / tau, target, reduction="none"),
            F.cross_entropy(u @ v_all.T / tau, target, reduction="none"))


def convirt_loss(v: torch.Tensor, u: torch.Tensor, tau: float = 0.1, lam: float = 0.75, **gathered) -> torch.Tensor:
    """Scalar loss: lam * l(v->u) + (1 - lam) * l(u->v), averaged over this batch's pairs."""
    v2u, u2v = convirt_loss_terms(v, u, tau, **gathered)
    return (lam * v2u + (1.0 - lam) * u2v).mean()
