"""DINOv2's total loss: its three terms weighed as dinov2/train/ssl_meta_arch.py (forward_backward) weighs them.

  total = dino_weight  * (sum of the global-pair CEs + sum of the local-pair CEs) / (n_global_terms + n_local_terms)
        + ibot_weight  * ibot_patch loss (each crop's masked patches averaged, summed, / all global crops)
        + koleo_weight * (KoLeo of global crop 1's [CLS] tokens + KoLeo of global crop 2's)

with n_global_terms = (G - 1) * G = 2 pairs of the two global crops and n_local_terms = max(L * G, 1) (DINOv2's
guard: with no local crops the two global pairs are divided by 3, not 2). KoLeo is a sum over the two crops:
DINOv2 halves it only for the value it logs; the logged `koleo_loss` here is the term as weighed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convirt_cli.torch.losses.dino_clstoken import dino_loss_sum
from convirt_cli.torch.losses.ibot_patch import ibot_loss
from convirt_cli.torch.losses.koleo import koleo_loss


@dataclass(frozen=True)
class MaskedPatches:
    """The iBOT inputs: [M, K] student logits and teacher probabilities of the M masked patches, the global crop
    each belongs to ([M], 0..n_crops-1), and n_crops, every global crop of the batch (masked or not)."""

    student_logits: torch.Tensor
    teacher_probs: torch.Tensor
    owner: torch.Tensor
    n_crops: int


def dinov2_loss(student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_cls: torch.Tensor,
                student_temp: float, dino_weight: float = 1.0, koleo_weight: float = 0.1,
                patches: MaskedPatches | None = None, ibot_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """student_logits: the DINO head's [B, K] per view, the 2 global crops first, then the local crops;
    teacher_probs: the teacher's centred [B, K] per global crop; student_cls: the student's [2B, D] [CLS] tokens of
    the global crops (crop 1's rows first). -> (total, {dino_loss, ibot_loss, koleo_loss} as weighed, unweighted)."""
    n_global, n_local = len(teacher_probs), len(student_logits) - len(teacher_probs)
    pair_sum, _ = dino_loss_sum(student_logits, teacher_probs, student_temp)
    parts = {"dino_loss": pair_sum / ((n_global - 1) * n_global + max(n_local * n_global, 1))}
    total = dino_weight * parts["dino_loss"]
    if patches is not None:
        parts["ibot_loss"] = ibot_loss(patches.student_logits, patches.teacher_probs, patches.owner, patches.n_crops,
                                       student_temp)
        total = total + ibot_weight * parts["ibot_loss"]
    if koleo_weight > 0:
        parts["koleo_loss"] = sum(koleo_loss(c) for c in student_cls.float().chunk(n_global))
        total = total + koleo_weight * parts["koleo_loss"]
    return total, parts
