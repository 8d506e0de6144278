"""The numpy metrics against scikit-learn on fixed arrays (ties, missing targets, absent classes)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from convirt_cli.torchfree.evaluate import metrics as M


def _binary(seed: int, n: int = 200, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = y * 0.8 + rng.normal(size=n)
    return y, (np.round(s, 1) if ties else s)  # rounding makes many tied scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_auprc_match_sklearn_with_ties(seed):
    y, s = _binary(seed)
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


def test_auc_fixed_values_and_one_class():
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(skm.average_precision_score(
        [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]))
    assert np.isnan(M.roc_auc([1, 1, 1], [0.2, 0.3, 0.4]))
    assert np.isnan(M.average_precision([0, 0], [0.2, 0.3]))


def test_f1_accuracy_and_ovr_auc_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + np.eye(4)[y] * 1.2
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = prob.argmax(1)
    pred[pred == 3] = 2  # class 3 is never predicted: macro F1 must still count it (as sklearn does)
    assert M.macro_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    assert M.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert M.ovr_auc(y, prob) == pytest.approx(skm.roc_auc_score(y, prob, multi_class="ovr", average="macro"), abs=1e-12)
    onehot = np.eye(4)[y]
    assert M.ovr_auprc(y, prob) == pytest.approx(skm.average_precision_score(onehot, prob, average="macro"), abs=1e-12)


def test_ovr_auprc_by_hand():
    """y = [0, 1, 1, 2]. Class 0: its positive ties a negative at 0.5 (one threshold: precision 1/2) -> 0.5.
    Class 1: ranked pos (0.5), neg (0.45), pos (0.4) -> (1 + 2/3) / 2. Class 2: its positive first -> 1.
    Macro: (0.5 + 5/6 + 1) / 3 = 7/9."""
    prob = np.array([[0.5, 0.45, 0.05], [0.2, 0.5, 0.3], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7]])
    assert M.ovr_auprc(np.array([0, 1, 1, 2]), prob) == pytest.approx(7 / 9, abs=1e-12)
    assert M.task_metrics("multiclass", np.array([0, 1, 1, 2.0]), prob)["auprc"] == pytest.approx(7 / 9, abs=1e-12)


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(4)
    y = rng.normal(50, 15, 120)
    pred = y + rng.normal(0, 8, 120)
    assert M.r2(y, pred) == pytest.approx(skm.r2_score(y, pred), abs=1e-12)
    assert M.mae(y, pred) == pytest.approx(skm.mean_absolute_error(y, pred), abs=1e-12)


def test_task_metrics_mask_missing_targets():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, (100, 3)).astype(float)
    s = rng.random((100, 3)) + y * 0.3
    y[rng.random((100, 3)) < 0.2] = np.nan  # missing labels
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 1.0)  # label c only has positives: AUC undefined
    out = M.task_metrics("multilabel", y, s, ["a", "b", "c"])
    aucs = []
    for k, name in enumerate("ab"):
        keep = ~np.isnan(y[:, k])
        aucs.append(skm.roc_auc_score(y[keep, k], s[keep, k]))
        assert out[f"auc/{name}"] == pytest.approx(aucs[-1], abs=1e-12)
        assert out[f"auprc/{name}"] == pytest.approx(skm.average_precision_score(y[keep, k], s[keep, k]), abs=1e-12)
    assert np.isnan(out["auc/c"])
    assert out["macro_auc"] == pytest.approx(np.mean(aucs), abs=1e-12)

    yc = np.array([0, 1, np.nan, 1, 0, 1])
    pc = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])
    mc = M.task_metrics("multiclass", yc, pc)
    keep = ~np.isnan(yc)
    assert mc["accuracy"] == pytest.approx(skm.accuracy_score(yc[keep], pc[keep].argmax(1)))
    assert mc["auc"] == pytest.approx(skm.roc_auc_score(yc[keep], pc[keep, 1]))
    reg = M.task_metrics("regression", np.array([1.0, np.nan, 3.0, 5.0]), np.array([1.5, 100.0, 2.0, 5.5]))
    assert reg["r2"] == pytest.approx(skm.r2_score([1, 3, 5], [1.5, 2, 5.5]))


def test_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    rng = np.random.default_rng(6)
    x = rng.normal(10, 2, 400)
    ci = M.bootstrap_ci(lambda i: {"mean": float(x[i].mean())}, len(x), n_boot=2000, seed=0)["mean"]
    half = 1.96 * x.std() / np.sqrt(len(x))  # about 0.196
    assert ci[0] == pytest.approx(x.mean() - half, abs=0.03)
    assert ci[1] == pytest.approx(x.mean() + half, abs=0.03)


def test_is_better_knows_the_direction():
    assert M.is_better("auc", 0.8, 0.7) and not M.is_better("auc", 0.6, 0.7)
    assert M.is_better("mae", 3.0, 4.0) and not M.is_better("mae", 5.0, 4.0)
    assert not M.is_better("auc", float("nan"), 0.1) and M.is_better("auc", 0.1, float("nan"))
