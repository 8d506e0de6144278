"""Similarity-map math, pure numpy (BioViL, Boecking et al. 2022, section 3 / its `get_similarity_map`).

Each cell of the image tower's last feature grid went through the same projection as the pooled embedding and was
L2-normalised (the export's dense graph does that): cells [h, w, d]. The map of a phrase is cells . text [h, w],
smoothed by a Gaussian of sigma 1.5 cells and upsampled (bilinear) to the model's input square.
"""

from __future__ import annotations

import numpy as np

SIGMA = 1.5  # cells, as BioViL
TRUNCATE = 4.0  # the kernel reaches this many sigmas (scipy.ndimage's default)


def gaussian_kernel(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """1-D Gaussian weights summing to 1, radius round(truncate * sigma)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _reflect_index(n: int, radius: int) -> np.ndarray:
    """Indices of a length-n axis padded by `radius` each side, mirrored about the edges (d c b a | a b c d), any
    radius (a grid smaller than the kernel mirrors again)."""
    i = np.arange(-radius, n + radius)
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i >= n, period - 1 - i, i)


def smooth(grid: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """Gaussian smoothing of the last two axes [..., h, w], separable, edges mirrored (scipy.ndimage.gaussian_filter
    with mode='reflect'). sigma 0: unchanged."""
    g = np.asarray(grid, np.float64)
    if sigma <= 0:
        return g
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    for axis in (-2, -1):
        n = g.shape[axis]
        padded = np.take(g, _reflect_index(n, r), axis=axis)
        g = sum(k[j] * np.take(padded, np.arange(j, j + n), axis=axis) for j in range(len(k)))
    return g


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling with half-pixel centres (align_corners=False), clamped at the edges: for each output
    position the two input indices and the weight of the second."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, pos - lo


def upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w] -> [height, width], bilinear (torch's interpolate(mode='bilinear', align_corners=False))."""
    g = np.asarray(grid, np.float64)
    y0, y1, wy = _axis_weights(g.shape[0], height)
    x0, x1, wx = _axis_weights(g.shape[1], width)
    rows = g[y0] * (1 - wy)[:, None] + g[y1] * wy[:, None]
    return rows[:, x0] * (1 - wx)[None] + rows[:, x1] * wx[None]


def cell_scores(cells: np.ndarray, query: np.ndarray) -> np.ndarray:
    """cells [h, w, d] (L2-normalised) . query [d] -> cosine per cell [h, w]."""
    return np.asarray(cells, np.float64) @ np.asarray(query, np.float64)


def similarity_map(cells: np.ndarray, query: np.ndarray, size: int, sigma: float = SIGMA) -> np.ndarray:
    """The map of one query over one image: [size, size] on the model's input square."""
    return upsample(smooth(cell_scores(cells, query), sigma), size, size)


def peak(heat: np.ndarray) -> tuple[int, int, float]:
    """(row, column, value) of the map's maximum (the first, reading order, on ties)."""
    i = int(np.argmax(heat))
    y, x = divmod(i, heat.shape[1])
    return y, x, float(heat[y, x])


def minmax(heat: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1]; a flat map is all zeros."""
    lo, hi = float(np.min(heat)), float(np.max(heat))
    return (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat, dtype=np.float64)


def pca_colours(cells: np.ndarray) -> np.ndarray:
    """DINOv2's picture of patch features: cells [h, w, d] -> their first three principal components as RGB
    [h, w, 3] in [0, 1], each component min-max scaled (sign fixed so its largest loading is positive)."""
    h, w, d = cells.shape
    x = np.asarray(cells, np.float64).reshape(h * w, d)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:3]
    comps = comps * np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])[:, None]
    proj = x @ comps.T
    if proj.shape[1] < 3:  # fewer than three cells or features: the missing components are flat
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    return np.stack([minmax(proj[:, c]) for c in range(3)], axis=1).reshape(h, w, 3)
