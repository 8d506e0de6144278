"""Zero-shot retrieval metrics (ConVIRT sec. 4.2): a retrieved candidate is correct when it shares the
query's label; Precision@k averaged over queries. Pure numpy."""

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
