"""RAD-DINO's segmentation evaluation: a linear head per patch on a frozen tower, Dice and IoU with bootstrap CIs.
Metrics against hand-worked masks; the probe end to end on the example data's finding masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torch.segment import fit_segmentation_probe, patch_targets, predict_masks
from convirt_cli.torchfree.evaluate.metrics import dice_iou, segmentation_metrics

runner = CliRunner()


def test_dice_and_iou_by_hand():
    truth = np.zeros((3, 4, 4), bool)
    pred = np.zeros((3, 4, 4), bool)
    truth[0, :2, :2] = True  # 4 pixels
    pred[0, :2, :3] = True  # 6 pixels, 4 of them right: Dice 2*4/10 = 0.8, IoU 4/6
    pred[1, 0, 0] = True  # nothing to find, one false pixel: Dice 0, IoU 0
    # image 2: both empty: nothing to find, nothing found -> 1 and 1
    dice, iou = dice_iou(pred, truth)
    assert np.allclose(dice, [0.8, 0.0, 1.0]) and np.allclose(iou, [4 / 6, 0.0, 1.0])
    m = segmentation_metrics(dice, iou, truth.reshape(3, -1).any(1))
    assert m["dice"] == pytest.approx(1.8 / 3) and m["dice_positive"] == pytest.approx(0.8)
    assert m["iou"] == pytest.approx((4 / 6 + 1) / 3) and m["iou_positive"] == pytest.approx(4 / 6)


def test_patch_targets_are_area_shares():
    m = np.zeros((1, 4, 4), bool)
    m[0, 0, :3] = True  # top-left 2x2 patch: 2 of 4 pixels; top-right: 1 of 4
    assert np.allclose(patch_targets(m, 2, 2)[0], [[0.5, 0.25], [0.0, 0.0]])


def test_probe_finds_a_region_that_the_features_mark():
    """Features that carry the mask (one channel = inside) plus noise: the fitted head segments it almost exactly."""
    rng = np.random.default_rng(0)
    masks = np.zeros((40, 32, 32), bool)
    for i in range(40):
        r, c = rng.integers(0, 4, 2) * 8
        masks[i, r:r + 16, c:c + 16] = True
    inside = patch_targets(masks, 4, 4)[..., None]
    feats = np.concatenate([inside + 0.05 * rng.standard_normal(inside.shape), rng.standard_normal((40, 4, 4, 3))],
                           -1).astype(np.float32)
    head = fit_segmentation_probe(feats[:30], masks[:30], feats[30:35], masks[30:35])
    pred = predict_masks(head["weight"], head["bias"], feats[35:], (32, 32), head["threshold"])
    dice, _ = dice_iou(pred, masks[35:])
    assert dice.mean() > 0.8 and isinstance(head["weight"], torch.Tensor)  # seen 0.87: 4x4 patches, soft edges
    noise = rng.standard_normal(feats.shape).astype(np.float32)  # features that say nothing: far worse
    head = fit_segmentation_probe(noise[:30], masks[:30], noise[30:35], masks[30:35])
    pred = predict_masks(head["weight"], head["bias"], noise[35:], (32, 32), head["threshold"])
    assert dice_iou(pred, masks[35:])[0].mean() < 0.6


@pytest.mark.slow
def test_segmentation_probe_on_example_masks(dino_run, tmp_path):
    """`finetune --task segmentation` on the example data (a mask per image for the region its finding draws; empty
    for 'no finding'): the DINO tower's patches against the same tower untrained, Dice/IoU with bootstrap CIs."""
    r = runner.invoke(app, ["finetune", str(EXAMPLES), "--task", "segmentation", "--mask-col", "mask",
                            "--init", f"{dino_run},random", "--model", "dino-tiny", "--label-fraction", "1.0",
                            "--bootstrap", "50", "--no-save-models", "--no-plot", "--out", str(tmp_path / "seg")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads((tmp_path / "seg" / "results.json").read_text())
    by = {rec["init"]: rec for rec in res["records"]}
    assert set(by) == {dino_run.name, "random(dino-tiny)"}
    for rec in by.values():
        m, ci = rec["test"], rec["test_ci95"]
        assert set(m) == {"dice", "iou", "dice_positive", "iou_positive"}
        assert 0 <= ci["dice"][0] <= m["dice"] <= ci["dice"][1] <= 1 and m["iou"] <= m["dice"] + 1e-9
        assert rec["grid"] == [8, 8]  # 64 px / patch 8
    # seen on 2 CPU cores: Dice on images with a region 0.33 (0.31 untrained); over all images, where saying
    # "nothing here" on a normal image also counts, 0.34 vs 0.26. The threshold is chosen on validation Dice
    # (sigmoid > 0.5 under-segments small regions: Dice 0.06)
    trained, untrained = by[dino_run.name]["test"], by["random(dino-tiny)"]["test"]
    assert trained["dice_positive"] > 0.25 and trained["dice"] > untrained["dice"] + 0.03, (trained, untrained)
    assert by[dino_run.name]["threshold"] < 0
