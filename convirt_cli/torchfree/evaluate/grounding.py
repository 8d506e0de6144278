"""Phrase grounding metrics of a similarity map against a target region (MS-CXR, Boecking et al. 2022), pure numpy.

  CNR            |mean(map in) - mean(map out)| / sqrt(var(map in) + var(map out))   (population variances)
  mIoU           mean over t in 0.1, 0.2, ..., 0.5 of IoU(minmax(map) > t, region)
  pointing game  1 when the map's maximum lies inside the region, else 0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convirt_cli.torchfree.evaluate.metrics import bootstrap_ci
from convirt_cli.torchfree.explain.maps import minmax

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
METRICS = ("cnr", "miou", "pointing_game")


def cnr(heat: np.ndarray, region: np.ndarray) -> float:
    """Contrast-to-noise ratio of the map inside vs outside the region (NaN when either side is empty)."""
    m = np.asarray(region, bool)
    inside, outside = np.asarray(heat, np.float64)[m], np.asarray(heat, np.float64)[~m]
    if not len(inside) or not len(outside):
        return float("nan")
    noise = np.sqrt(inside.var() + outside.var())
    return float(abs(inside.mean() - outside.mean()) / noise) if noise > 0 else 0.0


def iou(pred: np.ndarray, region: np.ndarray) -> float:
    p, t = np.asarray(pred, bool), np.asarray(region, bool)
    union = (p | t).sum()
    return float((p & t).sum() / union) if union else 0.0


def miou(heat: np.ndarray, region: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> float:
    """Mean IoU of the min-max-normalised map above each threshold with the region."""
    norm = minmax(np.asarray(heat, np.float64))
    return float(np.mean([iou(norm > t, region) for t in thresholds]))


def pointing_game(heat: np.ndarray, region: np.ndarray) -> float:
    """1.0 when the map's (first) maximum falls inside the region."""
    return float(np.asarray(region, bool).ravel()[int(np.argmax(heat))])


def sample_scores(heat: np.ndarray, region: np.ndarray) -> dict[str, float]:
    return {"cnr": cnr(heat, region), "miou": miou(heat, region), "pointing_game": pointing_game(heat, region)}


def summarise(scores: list[dict[str, float]], findings: list[str], n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Per-sample scores -> overall and per-finding means with percentile-bootstrap 95% intervals:
    {cnr: {mean, ci}, miou: ..., pointing_game: ..., count, per_finding: {finding: {...}}}."""
    table = {k: np.array([s[k] for s in scores], np.float64) for k in METRICS}

    def block(idx: np.ndarray) -> dict:
        out: dict = {"count": len(idx)}
        ci = bootstrap_ci(lambda b: {k: float(np.nanmean(table[k][idx][b])) for k in METRICS}, len(idx), n_boot,
                          seed) if n_boot and len(idx) > 1 else {}
        for k in METRICS:
            out[k] = {"mean": float(np.nanmean(table[k][idx])) if len(idx) else float("nan"),
                      "ci95": list(ci.get(k, (float("nan"), float("nan"))))}
        return out

    names = np.array(findings)
    report = block(np.arange(len(scores)))
    report["per_finding"] = {f: block(np.flatnonzero(names == f)) for f in sorted(set(findings))}
    return report
