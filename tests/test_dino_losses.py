"""DINO, Sinkhorn-Knopp, iBOT, KoLeo and NT-Xent against plain numpy written from the papers' formulas, and their
composition against a numpy transcription of DINOv2's ssl_meta_arch.forward_backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convirt_cli.torch.losses.centering import centered_probs, sinkhorn_knopp, updated_center
from convirt_cli.torch.losses.collapse import entropy, prototypes_in_use
from convirt_cli.torch.losses.dino_clstoken import dino_loss
from convirt_cli.torch.losses.dinov2 import MaskedPatches, dinov2_loss
from convirt_cli.torch.losses.ibot_patch import ibot_loss
from convirt_cli.torch.losses.koleo import koleo_loss
from convirt_cli.torch.losses.nt_xent import nt_xent


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_dino_loss_with_centring_and_sharpening_matches_numpy():
    rng = np.random.default_rng(0)
    b, k, views = 3, 5, 4  # 2 global + 2 local
    student = [rng.normal(size=(b, k)) for _ in range(views)]
    teacher = [rng.normal(size=(b, k)) for _ in range(2)]
    center = rng.normal(size=(1, k)) * 0.1
    tau_s, tau_t = 0.1, 0.04
    probs = [np_softmax((t - center) / tau_t) for t in teacher]
    ref, n = 0.0, 0
    for ti in range(2):
        for si in range(views):
            if si == ti:
                continue
            log_p = np.log(np_softmax(student[si] / tau_s))
            ref += np.mean([-(probs[ti][i] * log_p[i]).sum() for i in range(b)])
            n += 1
    got = dino_loss([torch.tensor(s) for s in student],
                    [centered_probs(torch.tensor(t), torch.tensor(center), tau_t) for t in teacher], tau_s)
    assert got.item() == pytest.approx(ref / n, rel=1e-6)
    assert n == 6  # 2 teacher views x 3 other student views each


def test_center_is_an_ema_of_the_batch_mean():
    c = torch.zeros(1, 3)
    t = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert torch.allclose(updated_center(c, t, 0.9), torch.tensor([[0.2, 0.2, 0.2]]))


def np_sinkhorn(logits, temp, iters):
    q = np.exp(logits / temp).T  # K x N
    k, n = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(1, keepdims=True)
        q /= k
        q /= q.sum(0, keepdims=True)
        q /= n
    return (q * n).T


def test_sinkhorn_knopp_rows_and_columns():
    rng = np.random.default_rng(1)
    logits = rng.uniform(-1, 1, size=(8, 6))
    got = sinkhorn_knopp(torch.tensor(logits), temp=0.5, iterations=3).numpy()
    assert np.allclose(got, np_sinkhorn(logits, 0.5, 3), atol=1e-6)
    assert np.allclose(got.sum(1), 1.0, atol=1e-6)  # every sample a distribution
    many = sinkhorn_knopp(torch.tensor(logits), temp=0.5, iterations=50).numpy()
    assert np.allclose(many.sum(0), 8 / 6, atol=1e-4)  # every prototype carries N/K of the batch
    # a batch in which every sample prefers prototype 0 is spread out, where softmax would collapse it
    skewed = torch.zeros(8, 6)
    skewed[:, 0] = 1.0
    skewed += torch.randn(8, 6) * 0.05
    assert prototypes_in_use(torch.softmax(skewed / 0.1, -1)) == 1 / 6
    assert prototypes_in_use(sinkhorn_knopp(skewed, 0.1, 10)) > 0.5


def test_ibot_loss_by_hand_with_half_the_crops_masked():
    """2 global crops, only crop 0 masked, at patches 0 and 1 (student temperature 1, K = 2):
    patch 0: student logits (0, 0) -> log softmax (-ln 2, -ln 2), CE = ln 2 whatever the teacher says;
    patch 1: student logits (ln 3, 0) -> softmax (3/4, 1/4), teacher (1, 0) -> CE = ln(4/3).
    Crop 0's mean is (ln 2 + ln 4/3) / 2 = ln(8/3) / 2; DINOv2 divides the sum of crop means by both crops:
    ln(8/3) / 4 = 0.2452 (averaging over the masked crops only gave twice that)."""
    s = torch.tensor([[0.0, 0.0], [np.log(3.0), 0.0]])
    t = torch.tensor([[0.3, 0.7], [1.0, 0.0]])
    got = ibot_loss(s, t, owner=torch.tensor([0, 0]), n_images=2, student_temp=1.0)
    assert got.item() == pytest.approx(np.log(8 / 3) / 4, abs=1e-7)
    # four crops, two masked with 1 and 3 patches: each crop averaged first, then / 4
    s4 = torch.tensor([[0.0, 0.0], [np.log(3.0), 0.0], [0.0, 0.0], [0.0, 0.0]])
    t4 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.2, 0.8]])
    got4 = ibot_loss(s4, t4, owner=torch.tensor([1, 3, 3, 3]), n_images=4, student_temp=1.0)
    assert got4.item() == pytest.approx((np.log(2) + (np.log(4 / 3) + 2 * np.log(2)) / 3) / 4, abs=1e-7)
    assert ibot_loss(s[:0], t[:0], torch.tensor([], dtype=torch.long), 2, 1.0).item() == 0.0


def test_ibot_loss_matches_a_per_image_loop_and_ignores_unmasked_patches():
    rng = np.random.default_rng(2)
    b, p, k = 4, 4, 5
    s = rng.normal(size=(b, p, k))
    t = np_softmax(rng.normal(size=(b, p, k)))
    masks = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    tau = 0.1
    per_image = [np.mean([-(t[i, j] * np.log(np_softmax(s[i, j] / tau))).sum() for j in range(p) if masks[i, j]])
                 if masks[i].any() else 0.0 for i in range(b)]

    def gathered(s, m):  # what the objective passes: the masked patches only, and whose they are
        m = torch.tensor(m)
        return torch.tensor(s)[m], torch.tensor(t)[m], m.nonzero()[:, 0]

    got = ibot_loss(*gathered(s, masks), b, tau)
    assert got.item() == pytest.approx(np.sum(per_image) / b, rel=1e-6)
    s2 = s.copy()
    s2[~masks] = rng.normal(size=s2[~masks].shape) * 10  # unmasked patches do not matter
    assert ibot_loss(*gathered(s2, masks), b, tau).item() == pytest.approx(got.item())


def np_log_softmax(x):
    return np.log(np_softmax(x))


def np_dinov2_total(s_global, s_local, t_global, s_patch, t_patch, masks, s_cls, tau_s, w_dino, w_ibot, w_koleo):
    """A transcription of DINOv2's ssl_meta_arch.forward_backward (2 global crops, crop-major rows [2B, ...]) in
    float64, written from the official code and not from this project's functions."""
    n_global, n_local = 2, len(s_local)
    n_local_terms = max(n_local * n_global, 1)
    n_global_terms = (n_global - 1) * n_global
    b = s_global.shape[0] // 2
    teacher = t_global.reshape(2, b, -1)

    def dino_loss_forward(student_list, teacher_list):  # DINOLoss.forward
        total = 0.0
        for st in student_list:
            lsm = np_log_softmax(st / tau_s)
            for tt in teacher_list:
                total -= np.sum(tt * lsm, axis=-1).mean()
        return total

    loss = 0.0
    if n_local:
        loss += w_dino * dino_loss_forward(s_local, list(teacher)) / (n_global_terms + n_local_terms)
    swapped = np.concatenate([teacher[1], teacher[0]])  # crop A's student rows meet crop B's teacher rows
    loss += w_dino * dino_loss_forward([s_global], [swapped]) * 2 / (n_global_terms + n_local_terms)
    koleo = 0.0
    for x in np.split(s_cls, 2):  # KoLeoLoss: nearest neighbour by inner product, then PairwiseDistance(eps)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
        dots = x @ x.T
        np.fill_diagonal(dots, -1)
        nn = dots.argmax(1)
        dist = np.linalg.norm(x - x[nn] + 1e-8, axis=1)
        koleo += -np.log(dist + 1e-8).mean()
    loss += w_koleo * koleo
    weights = (1 / np.maximum(masks.sum(-1), 1.0))[:, None].repeat(masks.shape[1], 1)[masks]
    ce = np.sum(t_patch * np_log_softmax(s_patch / tau_s), axis=-1)  # forward_masked
    ibot = -(ce * weights).sum() / masks.shape[0]
    loss += w_ibot * ibot * 2 * (1 / n_global)  # loss_scales * ibot_loss_scale
    return loss


@pytest.mark.parametrize("n_local", [0, 3])
def test_dinov2_composition_matches_the_official_weighing(n_local):
    """DINO + iBOT + KoLeo on random inputs equal DINOv2's total within 1e-5 (with the old iBOT normalisation or the
    KoLeo mean this differs by ~0.1)."""
    rng = np.random.default_rng(7)
    b, k, d, p = 6, 11, 8, 9
    s_global, t_global = rng.normal(size=(2 * b, k)), np_softmax(rng.normal(size=(2 * b, k)) / 0.5)
    s_local = [rng.normal(size=(b, k)) for _ in range(n_local)]
    masks = np.zeros((2 * b, p), bool)
    for i, n in zip(rng.permutation(2 * b)[:b], range(1, b + 1)):  # half the crops masked, 1..b patches each
        masks[i, rng.permutation(p)[:n]] = True
    m = int(masks.sum())
    s_patch, t_patch = rng.normal(size=(m, k)), np_softmax(rng.normal(size=(m, k)) / 0.5)
    s_cls = rng.normal(size=(2 * b, d))
    ref = np_dinov2_total(s_global, s_local, t_global, s_patch, t_patch, masks, s_cls, 0.1, 1.0, 1.0, 0.1)
    T = torch.tensor
    student = [T(s_global[:b]), T(s_global[b:])] + [T(x) for x in s_local]
    patches = MaskedPatches(T(s_patch), T(t_patch), T(masks).nonzero()[:, 0], 2 * b)
    total, parts = dinov2_loss(student, [T(t_global[:b]), T(t_global[b:])], T(s_cls), 0.1, dino_weight=1.0,
                               koleo_weight=0.1, patches=patches, ibot_weight=1.0)
    assert abs(total.item() - ref) <= 1e-5
    assert set(parts) == {"dino_loss", "ibot_loss", "koleo_loss"}


def test_koleo_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    nearest = [min(np.linalg.norm(xn[i] - xn[j]) for j in range(6) if j != i) for i in range(6)]
    assert koleo_loss(torch.tensor(x)).item() == pytest.approx(-np.mean(np.log(nearest)), rel=1e-6)
    spread = koleo_loss(torch.eye(4))
    clumped = koleo_loss(torch.eye(4) + 3.0)
    assert spread < clumped  # spreading a batch out lowers it


def test_nt_xent_matches_a_per_view_loop():
    rng = np.random.default_rng(4)
    b, d, tau = 4, 3, 0.5
    z1, z2 = rng.normal(size=(b, d)), rng.normal(size=(b, d))
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    losses = []
    for i in range(2 * b):
        pos = (i + b) % (2 * b)
        sims = np.array([z[i] @ z[j] / tau for j in range(2 * b) if j != i])
        losses.append(-(z[i] @ z[pos] / tau) + np.log(np.exp(sims).sum()))
    assert nt_xent(torch.tensor(z1), torch.tensor(z2), tau).item() == pytest.approx(np.mean(losses), rel=1e-6)


def test_entropy_bounds():
    k = 8
    assert entropy(torch.full((3, k), 1 / k)).item() == pytest.approx(np.log(k))
    assert entropy(torch.eye(k)).item() == pytest.approx(0.0, abs=1e-6)
