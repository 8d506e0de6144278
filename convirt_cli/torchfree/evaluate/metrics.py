"""Classification and regression metrics as pure numpy functions (no scikit-learn at run time).

Definitions follow scikit-learn's so numbers compare with papers that used it (tests check this):
ROC AUC is the Mann-Whitney statistic with tied scores counted half; AUPRC is average precision
(sum over thresholds of recall gain x precision, no interpolation); macro F1 averages over the
classes present in the truth or the predictions. Missing targets are NaN and are left out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PRIMARY = {"multilabel": "macro_auc", "multiclass": "auc", "regression": "r2", "segmentation": "dice_positive"}
METRICS = {"multilabel": ["macro_auc", "macro_auprc"], "multiclass": ["auc", "auprc", "accuracy", "macro_f1"],
           "regression": ["r2", "mae"], "segmentation": ["dice_positive", "iou_positive", "dice", "iou"]}
# metrics where lower is better (early stopping and "best" need the direction)
LOWER_IS_BETTER = {"mae", "rmse", "loss"}


def _rank_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Binary y [N] (0/1), score [N] -> ROC AUC; NaN when only one class is present."""
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rank_average(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Binary y [N], score [N] -> area under the precision-recall curve (step-wise); NaN without positives."""
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct threshold
    tps = np.cumsum(t)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(pred))) if len(y) else float("nan")


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean F1 over the classes seen in y or pred (scikit-learn's average='macro')."""
    y, pred = np.asarray(y), np.asarray(pred)
    f1s = []
    for c in np.union1d(y, pred):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")


def ovr_auc(y: np.ndarray, prob: np.ndarray) -> float:
    """Class indices y [N], probabilities [N, K] -> macro one-vs-rest AUC over classes present in y."""
    y = np.asarray(y).astype(int)
    aucs = [roc_auc(y == k, prob[:, k]) for k in range(prob.shape[1])]
    return float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan")


def ovr_auprc(y: np.ndarray, prob: np.ndarray) -> float:
    """Class indices y [N], probabilities [N, K] -> macro one-vs-rest average precision over classes present in y
    (RAD-DINO's classification metric; unlike AUC it moves with class balance, so rare classes weigh in)."""
    y = np.asarray(y).astype(int)
    return _nanmean([average_precision(y == k, prob[:, k]) for k in range(prob.shape[1])])


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y, np.float64) - np.asarray(pred, np.float64))))


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (NaN for a constant target)."""
    y = np.asarray(y, np.float64)
    ss_tot = np.sum((y - y.mean()) ** 2)
    if ss_tot == 0:
        return float("nan")
    return float(1 - np.sum((y - np.asarray(pred, np.float64)) ** 2) / ss_tot)


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, np.float64)
    return float(np.nanmean(arr)) if np.any(~np.isnan(arr)) else float("nan")


def task_metrics(task: str, y: np.ndarray, scores: np.ndarray, names: list[str] | None = None) -> dict[str, float]:
    """All metrics of a task; rows/labels whose target is NaN are masked out.

    multilabel: y [N, K] 0/1/NaN, scores [N, K] probabilities -> auc/<name>, auprc/<name>, macro_auc, macro_auprc
    multiclass: y [N] class index/NaN, scores [N, K] probabilities -> accuracy, macro_f1, auc and auprc (one-vs-rest)
    regression: y [N] value/NaN, scores [N] predictions -> mae, r2
    """
    y = np.asarray(y, np.float64)
    scores = np.asarray(scores, np.float64)
    if task == "multilabel":
        names = names or [str(k) for k in range(y.shape[1])]
        out: dict[str, float] = {}
        aucs, aps = [], []
        for k, name in enumerate(names):
            keep = ~np.isnan(y[:, k])
            aucs.append(roc_auc(y[keep, k], scores[keep, k]))
            aps.append(average_precision(y[keep, k], scores[keep, k]))
            out[f"auc/{name}"], out[f"auprc/{name}"] = aucs[-1], aps[-1]
        return {"macro_auc": _nanmean(aucs), "macro_auprc": _nanmean(aps)} | out
    keep = ~np.isnan(y)
    y, scores = y[keep], scores[keep]
    if task == "multiclass":
        yi = y.astype(int)
        pred = scores.argmax(1)
        return {"auc": ovr_auc(yi, scores), "auprc": ovr_auprc(yi, scores), "accuracy": accuracy(yi, pred),
                "macro_f1": macro_f1(yi, pred)}
    if task == "regression":
        return {"mae": mae(y, scores), "r2": r2(y, scores)}
    raise ValueError(f"unknown task {task!r}")


def bootstrap_ci(
    fn: Callable[[np.ndarray], dict[str, float]], n: int, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap: fn(indices) -> metrics, over n_boot resamples of range(n) with replacement.

    Resamples where a metric is undefined (one class only) are left out of that metric's interval.
    """
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        for key, value in fn(rng.integers(0, n, n)).items():
            draws.setdefault(key, []).append(value)
    out = {}
    for key, values in draws.items():
        arr = np.asarray(values, np.float64)
        arr = arr[~np.isnan(arr)]
        out[key] = (float(np.quantile(arr, alpha / 2)), float(np.quantile(arr, 1 - alpha / 2))) if len(arr) \
            else (float("nan"), float("nan"))
    return out


def is_better(metric: str, new: float, old: float) -> bool:
    """Direction-aware comparison; NaN never wins."""
    if np.isnan(new):
        return False
    if np.isnan(old):
        return True
    return new < old if metric in LOWER_IS_BETTER else new > old


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image Dice 2|P&T| / (|P| + |T|) and IoU |P&T| / |P|T| of binary masks [N, H, W]; an image where both
    are empty scores 1 (nothing to find, nothing found)."""
    p = np.asarray(pred, bool).reshape(len(pred), -1)
    t = np.asarray(truth, bool).reshape(len(truth), -1)
    inter = (p & t).sum(1).astype(np.float64)
    total = p.sum(1) + t.sum(1)
    union = (p | t).sum(1)
    dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return dice, iou


def segmentation_metrics(dice: np.ndarray, iou: np.ndarray, has_target: np.ndarray) -> dict[str, float]:
    """Means over images, and over the images whose target is not empty (where there is something to segment)."""
    pos = np.asarray(has_target, bool)
    return {"dice": float(np.mean(dice)) if len(dice) else float("nan"),
            "iou": float(np.mean(iou)) if len(iou) else float("nan"),
            "dice_positive": float(np.mean(dice[pos])) if pos.any() else float("nan"),
            "iou_positive": float(np.mean(iou[pos])) if pos.any() else float("nan")}
