"""Metrics of a ranking (ConVIRT sec. 4.2's zero-shot retrieval protocol scores with them): top-k candidates,
Precision@k (a candidate is correct when it shares the query's label) and a pair's Recall@k. Pure numpy."""

from __future__ import annotations

import numpy as np


def topk_indices(sim: np.ndarray, k: int) -> np.ndarray:
    """sim [Q, N] -> [Q, k] candidate indices, best first (ties broken by lower index)."""
    k = min(k, sim.shape[1])
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(sim, part, 1)), axis=1)
    return np.take_along_axis(part, order, 1)


def precision_at_k(sim: np.ndarray, query_labels, cand_labels, k: int) -> np.ndarray:
    """Per-query fraction of the top-k candidates whose label equals the query's label: [Q]."""
    q = np.asarray(query_labels)
    c = np.asarray(cand_labels)
    top = topk_indices(sim, k)
    return (c[top] == q[:, None]).mean(axis=1)


def pair_recall_at_k(sim: np.ndarray, groups, k: int) -> tuple[float, float]:
    """Each query's own pair among its top-k candidates: (recall@k, what a random ranking would score).

    sim [N, N] query i's positive is candidate i; `groups` [N] ids of identical candidates (the same report
    text twice counts as the same answer), so a hit is any top-k candidate of the query's group.
    """
    g = np.asarray(groups)
    n = len(g)
    if n == 0:
        return float("nan"), float("nan")
    k = min(k, n)
    top = topk_indices(sim, k)
    recall = float((g[top] == g[:, None]).any(1).mean())
    _, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    m = counts[inverse].astype(np.float64)  # candidates that count as a hit for each query
    # P(none of the m hits among k draws without replacement from n)
    miss = np.ones(n)
    for j in range(k):
        miss *= np.clip((n - m - j) / (n - j), 0, 1)
    return recall, float((1 - miss).mean())
