"""DINO, Sinkhorn-Knopp, iBOT, KoLeo and NT-Xent against plain numpy written from the papers' formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convirt_cli.torch.losses.dino import (
    centered_probs,
    dino_loss,
    entropy,
    ibot_loss,
    koleo_loss,
    nt_xent,
    prototypes_in_use,
    sinkhorn_knopp,
    updated_center,
)


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


def test_ibot_loss_counts_masked_patches_only():
    rng = np.random.default_rng(2)
    b, p, k = 3, 4, 5
    s = rng.normal(size=(b, p, k))
    t = np_softmax(rng.normal(size=(b, p, k)))
    masks = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 0]], bool)
    tau = 0.1
    per_image = []
    for i in range(b):
        if masks[i].any():
            ce = [-(t[i, j] * np.log(np_softmax(s[i, j] / tau))).sum() for j in range(p) if masks[i, j]]
            per_image.append(np.mean(ce))
    def gathered(s, m):  # what the objective passes: the masked patches only, and whose they are
        m = torch.tensor(m)
        return torch.tensor(s)[m], torch.tensor(t)[m], m.nonzero()[:, 0]

    got = ibot_loss(*gathered(s, masks), b, tau)
    assert got.item() == pytest.approx(np.mean(per_image), rel=1e-6)
    s2 = s.copy()
    s2[~masks] = rng.normal(size=s2[~masks].shape) * 10  # unmasked patches do not matter
    assert ibot_loss(*gathered(s2, masks), b, tau).item() == pytest.approx(got.item())
    assert ibot_loss(*gathered(s, np.zeros((b, p), bool)), b, tau).item() == 0.0


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
