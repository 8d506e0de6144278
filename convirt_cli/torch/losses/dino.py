"""Self-distillation losses of DINO / iBOT / DINOv2 (RAD-DINO's recipe) and SimCLR's NT-Xent, as pure functions.

DINO (Caron et al. 2021): the student's distribution over K prototypes, softmax(s / tau_s), is trained towards the
teacher's sharpened, centred distribution on *another* view of the same image:
  L_dino = mean over (teacher view t, student view s != t) of  -sum_k P_t[k] * log softmax(s / tau_s)[k]
Centring keeps the teacher from collapsing: classic DINO subtracts an EMA of the teacher logits before
softmax(. / tau_t); DINOv2 replaces it by a few Sinkhorn-Knopp iterations, which make every prototype equally used
over the batch.
iBOT (Zhou et al. 2022): the same cross-entropy per patch token, on the patches the student saw masked.
KoLeo (Sablayrolles et al. 2019): -mean_i log(min_j ||x_i - x_j||) on L2-normalised features spreads a batch out.
NT-Xent (SimCLR, Chen et al. 2020): InfoNCE over 2B views, each view's positive is the other view of its image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_soft(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per row: -sum_k p[k] log softmax(s / tau)[k]. [N, K], [N, K] -> [N]."""
    return -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1)


def centered_probs(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """Classic DINO centring and sharpening: softmax((t - c) / tau_t). [N, K], [1, K] -> [N, K]."""
    return F.softmax((teacher_logits.float() - center) / temp, dim=-1)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """EMA of the batch mean of teacher logits (all-reduced by the caller under torchrun)."""
    return center * momentum + teacher_logits.float().mean(0, keepdim=True) * (1 - momentum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temp: float, iterations: int = 3,
                   world_sum=None) -> torch.Tensor:
    """DINOv2's centring: Q = exp(t / tau_t), alternately normalised so that every prototype (column) carries 1/K
    of the batch's mass and every sample (row) 1/N; returned scaled so each row sums to 1. [N, K] -> [N, K].

    `world_sum(tensor)` all-reduces over ranks under torchrun (the batch is then the global batch)."""
    reduce = world_sum or (lambda x: x)
    q = torch.exp(teacher_logits.float() / temp)  # logits of a weight-normalised head lie in [-1, 1]: no overflow
    n = torch.tensor(q.shape[0], device=q.device, dtype=q.dtype)
    n = reduce(n)
    k = q.shape[1]
    q = q / reduce(q.sum())
    for _ in range(iterations):
        q = q / reduce(q.sum(0, keepdim=True)) / k  # columns: 1/K each
        q = q / q.sum(1, keepdim=True) / n  # rows: 1/N each
    return q * n


def dino_loss(student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_temp: float) -> torch.Tensor:
    """Mean cross-entropy over every (teacher global view t, student view s) pair with s != t.

    student_logits: one [B, K] per view, the global views first; teacher_probs: one [B, K] per global view."""
    total, pairs = 0.0, 0
    for t, probs in enumerate(teacher_probs):
        for s, logits in enumerate(student_logits):
            if s == t:
                continue
            total = total + cross_entropy_soft(probs, logits, student_temp).mean()
            pairs += 1
    return total / pairs


def ibot_loss(student_patch_logits: torch.Tensor, teacher_patch_probs: torch.Tensor, owner: torch.Tensor,
              n_images: int, student_temp: float) -> torch.Tensor:
    """iBOT's masked-patch loss over the masked patches only (gathered: [M, K] logits and probabilities, `owner` [M]
    the image each belongs to): each image's patches averaged first (as DINOv2 weights them), then the images that
    have any."""
    if len(owner) == 0:
        return student_patch_logits.sum() * 0.0
    ce = cross_entropy_soft(teacher_patch_probs, student_patch_logits, student_temp)
    sums = torch.zeros(n_images, device=ce.device, dtype=ce.dtype).index_add(0, owner, ce)
    counts = torch.zeros(n_images, device=ce.device, dtype=ce.dtype).index_add(0, owner, torch.ones_like(ce))
    has = counts > 0
    return (sums[has] / counts[has]).mean()


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator: -mean_i log(distance to the nearest other row). [N, D] -> scalar."""
    x = F.normalize(x.float(), dim=-1, eps=eps)
    dist = torch.cdist(x, x)
    dist = dist + torch.eye(len(x), device=x.device, dtype=x.dtype) * 1e9  # a row is not its own neighbour
    return -torch.log(dist.min(1).values + eps).mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temp: float = 0.1) -> torch.Tensor:
    """SimCLR's loss: the 2B views of B images; each view's positive is its image's other view, the other 2B - 2
    views are negatives; cosine similarity / tau. z1, z2 [B, D] -> scalar (mean over the 2B views)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    b = z1.shape[0]
    sim = z @ z.T / temp
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean per-row entropy (nats) of probability rows [N, K]: 0 when every row is one-hot, log K when uniform."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()


def prototypes_in_use(probs: torch.Tensor) -> float:
    """Fraction of the K prototypes that are some row's most likely one (collapse drives this to 1/K)."""
    return probs.argmax(-1).unique().numel() / probs.shape[-1]
