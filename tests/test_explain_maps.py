"""The similarity-map math (torchfree/explain/maps.py) against hand-worked values and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convirt_cli.torchfree.explain import maps


def test_smoothing_a_point_matches_the_gaussian_by_hand():
    # a point far from the edges: the centre keeps g(0)^2 with g(0) = 1 / sum_x exp(-x^2 / (2 * 1.5^2)),
    # the sum ~ sqrt(2 pi) * 1.5 (the tails past 6 cells weigh < 1e-4); one cell off: g(0) g(1), g(1) = g(0) e^(-1/4.5)
    grid = np.zeros((13, 13))
    grid[6, 6] = 1.0
    out = maps.smooth(grid, 1.5)
    g0 = 1 / (math.sqrt(2 * math.pi) * 1.5)
    assert out[6, 6] == pytest.approx(g0 ** 2, rel=1e-3)
    assert out[6, 7] == pytest.approx(g0 ** 2 * math.exp(-1 / 4.5), rel=1e-3)
    assert out.sum() == pytest.approx(1.0)  # mass kept


def test_smoothing_mirrors_at_the_edges_like_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    grid = np.random.default_rng(0).normal(size=(4, 5))  # smaller than the kernel (radius 6): mirrored repeatedly
    np.testing.assert_allclose(maps.smooth(grid, 1.5), ndimage.gaussian_filter(grid, 1.5, mode="reflect"), atol=1e-12)
    assert np.allclose(maps.smooth(np.full((3, 3), 2.0)), 2.0)


def test_upsampling_by_hand_and_against_torch():
    # [0, 1] to 4 columns: sample points -0.25, 0.25, 0.75, 1.25 (half-pixel centres), clamped at the edges
    np.testing.assert_allclose(maps.upsample(np.array([[0.0, 1.0]]), 1, 4), [[0, 0.25, 0.75, 1]])
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(1).normal(size=(3, 4))
    ref = torch.nn.functional.interpolate(torch.tensor(g)[None, None], size=(10, 7), mode="bilinear",
                                          align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(maps.upsample(g, 10, 7), ref, atol=1e-12)


def test_map_is_cosine_per_cell_then_smoothed_and_upsampled():
    cells = np.zeros((2, 2, 2))
    cells[0, 0] = [1, 0]
    cells[0, 1] = [0, 1]
    cells[1, 0] = [math.sqrt(0.5), math.sqrt(0.5)]
    cells[1, 1] = [-1, 0]
    np.testing.assert_allclose(maps.cell_scores(cells, np.array([1.0, 0.0])), [[1, 0], [math.sqrt(0.5), -1]])
    heat = maps.similarity_map(cells, np.array([1.0, 0.0]), 8, sigma=0)
    assert heat.shape == (8, 8) and maps.peak(heat)[:2] == (0, 0) and heat[0, 0] == pytest.approx(1.0)
    assert maps.peak(np.array([[0, 2], [3, 1]]))[:2] == (1, 0)
    np.testing.assert_allclose(maps.minmax(np.array([[1.0, 3.0]])), [[0, 1]])
    assert not maps.minmax(np.ones((2, 2))).any()


def test_pca_colours_follow_the_main_direction_of_the_features():
    # features vary along one direction from left to right: the first component (red) orders the columns
    t = np.linspace(-1, 1, 4)
    cells = np.zeros((3, 4, 5))
    cells[..., 0] = t[None, :] * 3
    cells[..., 1] = np.random.default_rng(0).normal(scale=0.01, size=(3, 4))
    rgb = maps.pca_colours(cells)
    assert rgb.shape == (3, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    red = rgb[..., 0].mean(0)
    assert np.all(np.diff(red) > 0) or np.all(np.diff(red) < 0)
