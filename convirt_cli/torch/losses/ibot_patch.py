"""iBOT's masked-patch loss (Zhou et al. 2022; DINOv2's dinov2/loss/ibot_patch_loss.py, forward_masked).

The same soft cross-entropy as DINO's, per patch token, on the patches the student saw masked. Each image's
masked patches are averaged first; the per-image means are then summed and divided by the number of global crops
in the batch, masked or not: a crop without a mask counts as 0. With half the crops masked the loss is half the
mean over the masked crops, as in DINOv2, iBOT and lightly.
"""

from __future__ import annotations

import torch

from convirt_cli.torch.losses.dino_clstoken import cross_entropy_soft


def ibot_loss(student_patch_logits: torch.Tensor, teacher_patch_probs: torch.Tensor, owner: torch.Tensor,
              n_images: int, student_temp: float) -> torch.Tensor:
    """student_patch_logits, teacher_patch_probs: [M, K] for the M masked patches of the batch; owner [M]: the crop
    each belongs to (0..n_images-1); n_images: every global crop of the batch. -> scalar
    sum_i mean_{p masked in i} CE_p / n_images."""
    if len(owner) == 0:
        return student_patch_logits.sum() * 0.0
    ce = cross_entropy_soft(teacher_patch_probs, student_patch_logits, student_temp)
    counts = torch.zeros(n_images, device=ce.device, dtype=ce.dtype).index_add(0, owner, torch.ones_like(ce))
    weight = 1.0 / counts.clamp_min(1.0)[owner]  # DINOv2's masks_weight: 1 / (masked patches of the patch's crop)
    return (ce * weight).sum() / n_images
