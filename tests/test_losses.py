"""ConVIRT loss against a plain numpy per-row loop of the paper's formula."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convirt_cli.torch.losses import convirt_loss, convirt_loss_terms


def numpy_convirt(v, u, tau, lam):
    """Eqs. 2-4 of Zhang et al. 2020, one pair at a time."""
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(v)):
        s_v = np.array([v[i] @ u[k] for k in range(len(u))]) / tau
        s_u = np.array([u[i] @ v[k] for k in range(len(v))]) / tau
        l_vu = -(s_v[i] - np.log(np.exp(s_v).sum()))
        l_uv = -(s_u[i] - np.log(np.exp(s_u).sum()))
        total += lam * l_vu + (1 - lam) * l_uv
    return total / len(v)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, 4)), rng.normal(size=(5, 4)) * 3.0  # scale must not matter: cosine


@pytest.mark.parametrize("tau,lam", [(0.1, 0.75), (0.1, 0.0), (0.1, 1.0), (0.5, 0.75), (1.0, 0.3)])
def test_matches_numpy_reference(batch, tau, lam):
    v, u = batch
    got = convirt_loss(torch.tensor(v), torch.tensor(u), tau=tau, lam=lam)
    assert float(got) == pytest.approx(numpy_convirt(v, u, tau, lam), rel=1e-5)


def test_hand_worked_two_pairs():
    # v1 = u1 = e1, v2 = u2 = e2 (orthogonal): each row's logits are (1/tau, 0) with the match first,
    # so every term is log(1 + exp(-1/tau)); at tau = 1: log(1 + 1/e) = 0.31326
    e = torch.eye(2)
    assert float(convirt_loss(e, e, tau=1.0, lam=0.75)) == pytest.approx(np.log(1 + np.exp(-1)), abs=1e-6)


def test_lambda_weights_directions(batch):
    v, u = (torch.tensor(x) for x in batch)
    v2u, u2v = convirt_loss_terms(v, u, 0.1)
    assert float(convirt_loss(v, u, 0.1, 1.0)) == pytest.approx(float(v2u.mean()))
    assert float(convirt_loss(v, u, 0.1, 0.0)) == pytest.approx(float(u2v.mean()))
    assert float(v2u.mean()) != pytest.approx(float(u2v.mean()))  # the two directions differ here


def test_half_lambda_is_clip_loss(batch):
    v, u = (F.normalize(torch.tensor(x), dim=-1) for x in batch)
    logits = v @ u.T / 0.07
    target = torch.arange(len(v))
    clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert float(convirt_loss(v, u, tau=0.07, lam=0.5)) == pytest.approx(float(clip), rel=1e-6)


def test_gathered_rows_equal_full_batch(batch):
    """Two 'ranks' each scoring their rows against the gathered batch give the full-batch loss."""
    v, u = (torch.tensor(x) for x in batch)
    full = convirt_loss(v, u, 0.1, 0.75)
    parts = [convirt_loss(v[a:b], u[a:b], 0.1, 0.75, v_all=v, u_all=u, offset=a) * (b - a) for a, b in [(0, 2), (2, 5)]]
    assert float(sum(parts) / 5) == pytest.approx(float(full), rel=1e-6)


def test_temperature_sharpens(batch):
    _v, u = (torch.tensor(x) for x in batch)
    aligned = convirt_loss(u, u, tau=0.05)
    assert float(aligned) < float(convirt_loss(u, u, tau=1.0))
