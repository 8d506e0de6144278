"""DINO's [CLS]-token loss (Caron et al. 2021; DINOv2's dinov2/loss/dino_clstoken_loss.py).

The student's distribution over K prototypes, softmax(s / tau_s), is trained towards the teacher's sharpened,
centred distribution (losses/centering.py) on *another* view of the same image:
  L_dino = mean over (teacher global view t, student view s != t) of  -mean_b sum_k P_t[b, k] log softmax(s_b / tau_s)[k]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_soft(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per row: -sum_k p[k] log softmax(s / tau)[k]. [N, K], [N, K] -> [N]."""
    return -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1)


def dino_loss(student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_temp: float) -> torch.Tensor:
    """Mean cross-entropy over every (teacher global view t, student view s) pair with s != t.

    student_logits: one [B, K] per view, the global views first; teacher_probs: one [B, K] per global view."""
    total, pairs = dino_loss_sum(student_logits, teacher_probs, student_temp)
    return total / pairs


def dino_loss_sum(student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor],
                  student_temp: float) -> tuple[torch.Tensor, int]:
    """(sum over the (t, s != t) pairs of each pair's batch-mean cross-entropy, the number of pairs)."""
    total, pairs = student_logits[0].new_zeros((), dtype=torch.float32), 0
    for t, probs in enumerate(teacher_probs):
        for s, logits in enumerate(student_logits):
            if s != t:
                total = total + cross_entropy_soft(probs, logits, student_temp).mean()
                pairs += 1
    return total, pairs
