"""Exact cosine top-k over L2-normalised rows, one block at a time (memory bounded by the block).

Scores are dot products (rows and queries are unit vectors). Ties go to the lower row, as in
convirt_cli.torchfree.evaluate.ranking.topk_indices, so blockwise and one-shot search agree exactly.
"""

from __future__ import annotations

import numpy as np


def _select(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k best (score desc, row asc) candidate columns: [Q, M] -> [Q, min(k, M)].

    Among columns tied with each other, rows must increase with the column (true for one block, and for
    [best so far | next block]); then the first tied columns are the lowest rows.
    """
    m = scores.shape[1]
    k = min(k, m)
    if k < m:
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
        greater = scores > kth
        tied = scores == kth
        room = k - greater.sum(1, keepdims=True)
        take = greater | (tied & (np.cumsum(tied, axis=1) <= room))
        cols = np.nonzero(take)[1].reshape(len(scores), k)
        scores, rows = np.take_along_axis(scores, cols, 1), np.take_along_axis(rows, cols, 1)
    order = np.lexsort((rows, -scores), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


class DamagedRows(ValueError):
    """Index rows that cannot be unit vectors (NaN, infinity, or a cosine beyond 1): the file is damaged."""

    def __init__(self, rows: list[int]):
        super().__init__(f"rows {rows[:5]}{' ...' if len(rows) > 5 else ''} are not unit vectors")
        self.rows = rows


def check_scores(scores: np.ndarray, first_row: int = 0) -> None:
    """Cosines of unit vectors lie in [-1, 1]: anything else (NaN included) means a damaged row."""
    bad = ~(np.abs(scores) <= 1.001)  # NaN compares False, so it is caught too
    if bad.any():
        raise DamagedRows(sorted({first_row + int(c) for c in np.nonzero(bad)[1]}))


def search(embeddings: np.ndarray, queries: np.ndarray, k: int = 10, block_bytes: int = 64 << 20,
           allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """embeddings [N, d] (may be a memmap), queries [Q, d] -> (scores [Q, k'], rows [Q, k']), k' = min(k, N).

    Reads `block_bytes` of rows at a time; peak extra memory ~ block + Q x block_rows scores. Raises DamagedRows
    when a row scores outside [-1, 1] (NaN, or garbage bytes in the file). `allowed` (bool [N]): only those rows
    compete; where fewer than k' are allowed the rest of a result row is padded with row -1 (score -inf).
    """
    n, d = embeddings.shape
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if n == 0 or k <= 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    block = max(k, block_bytes // (4 * d))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, block):
        chunk = np.asarray(embeddings[start:start + block], dtype=np.float32)
        s = q @ chunk.T
        check_scores(s, start)
        if allowed is not None:
            s[:, ~allowed[start:start + len(chunk)]] = -np.inf
        r = np.broadcast_to(np.arange(start, start + len(chunk), dtype=np.int64), s.shape)
        s, r = _select(s, r, k)
        best_s, best_r = _select(np.concatenate([best_s, s], 1), np.concatenate([best_r, r], 1), k)
    if allowed is not None:
        best_r = np.where(np.isneginf(best_s), -1, best_r)
    return best_s, best_r
