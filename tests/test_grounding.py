"""evaluate grounding: each metric against a hand-worked map, the targets (masks, boxes, skips, errors) and the CLI."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.evaluate import grounding as g
from convirt_cli.torchfree.evaluate.regions import Target, region_of

# a 2 x 3 map; region: the left column
HEAT = np.array([[4.0, 1.0, 0.0], [2.0, 3.0, 0.0]])
REGION = np.array([[1, 0, 0], [1, 0, 0]], bool)


def test_cnr_by_hand():
    # inside {4, 2}: mean 3, var 1; outside {1, 0, 3, 0}: mean 1, var (0 + 1 + 4 + 1) / 4 = 1.5
    assert g.cnr(HEAT, REGION) == pytest.approx(2 / math.sqrt(2.5))
    assert math.isnan(g.cnr(HEAT, np.ones_like(REGION)))


def test_miou_by_hand():
    # min-max: [[1, .25, 0], [.5, .75, 0]]; > .1, .2: {1, .25, .5, .75} -> IoU 2/4; > .3, .4: {1, .5, .75} -> 2/3;
    # > .5: {1, .75} -> 1/3 (the union is 3 cells); mean (.5 + .5 + 2/3 + 2/3 + 1/3) / 5
    assert g.miou(HEAT, REGION) == pytest.approx((0.5 + 0.5 + 2 / 3 + 2 / 3 + 1 / 3) / 5)


def test_pointing_game_by_hand():
    assert g.pointing_game(HEAT, REGION) == 1.0
    assert g.pointing_game(np.array([[0.0, 1.0, 0.0], [2.0, 3.0, 0.0]]), REGION) == 0.0  # the maximum, 3, is outside


def test_summary_per_finding_and_bootstrap():
    scores = [{"cnr": 1.0, "miou": 0.5, "pointing_game": 1.0}, {"cnr": 3.0, "miou": 0.1, "pointing_game": 0.0},
              {"cnr": 2.0, "miou": 0.3, "pointing_game": 1.0}]
    rep = g.summarise(scores, ["a", "a", "b"], n_boot=200)
    assert rep["cnr"]["mean"] == pytest.approx(2.0) and rep["count"] == 3
    assert rep["per_finding"]["a"]["pointing_game"]["mean"] == 0.5 and rep["per_finding"]["b"]["count"] == 1
    lo, hi = rep["cnr"]["ci95"]
    assert 1.0 <= lo <= 2.0 <= hi <= 3.0


def test_regions_boxes_masks_and_their_errors(tmp_path):
    # a 200 x 100 image seen as a 50 px square: the centre 100 x 100 (x 50..150), halved
    t = Target("i.png", "effusion", "effusion", "t.csv:2", boxes=[(50, 0, 50, 50)])
    r = region_of(t, 200, 100, 50, print)
    assert r[:25, :25].all() and r.sum() == 25 * 25
    with pytest.raises(ConvirtError, match="t.csv:2: box .* outside its image"):
        region_of(Target("i.png", "e", "e", "t.csv:2", boxes=[(180, 0, 50, 10)]), 200, 100, 50, print)
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(tmp_path / "empty.png")
    assert region_of(Target("i.png", "e", "e", "s", mask=tmp_path / "empty.png"), 200, 100, 50, print) is None
    small = np.zeros((10, 20), np.uint8)
    small[:, 10:] = 255  # the right half, at a tenth of the image's size: scaled, then cropped to x 100..150
    Image.fromarray(small).save(tmp_path / "half.png")
    said = []
    r = region_of(Target("i.png", "e", "e", "s", mask=tmp_path / "half.png"), 200, 100, 50, said.append)
    assert r[:, 25:].all() and not r[:, :25].any() and "scaled" in said[0]


def test_reading_targets_counts_skips_and_joins_boxes(tmp_path):
    from convirt_cli.torchfree.data.readers import Row
    from convirt_cli.torchfree.evaluate.regions import read_targets

    def row(i, text, **cols):
        return Row(Path(f"/d/{i}.png"), text, f"t.csv:{i}", {"x": "", "y": "", "w": "", "h": ""} | cols)

    rows = [row(1, "opacity", x="1", y="2", w="3", h="4", category="pneumonia"),
            row(1, "opacity", x="5", y="6", w="7", h="8", category="pneumonia"), row(2, "opacity"), row(3, "")]
    targets, skips = read_targets(rows, "label_text", "category", None, ["x", "y", "w", "h"], Path("/d"))
    assert len(targets) == 1 and targets[0].boxes == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert targets[0].finding == "pneumonia" and skips == Counter({"no box": 1, "no phrase": 1})


@pytest.fixture(scope="module")
def ms_cxr_table(tmp_path_factory) -> Path:
    """Six example images in MS-CXR's layout (dicom_id, category, label_text, x, y, w, h, image_width,
    image_height), boxes around their mask, one row without a box."""
    from conftest import EXAMPLES

    d = tmp_path_factory.mktemp("mscxr")
    lines = ["dicom_id,category,label_text,x,y,w,h,image_width,image_height"]
    for i in (0, 1, 2, 3, 4, 5):  # 3: no finding, an empty mask
        m = np.asarray(Image.open(EXAMPLES / "masks" / f"{i:04d}.png")) > 0
        Image.open(EXAMPLES / "images" / f"{i:04d}.png").save(d / f"{i:04d}.png")
        if not m.any():
            lines.append(f"{i:04d},none,no finding,,,,,128,128")
            continue
        ys, xs = np.nonzero(m)
        lines.append(f"{i:04d},thing,opacity,{xs.min()},{ys.min()},{xs.max() - xs.min() + 1},"
                     f"{ys.max() - ys.min() + 1},128,128")
    (d / "ms_cxr.csv").write_text("\n".join(lines) + "\n")
    return d / "ms_cxr.csv"


def test_cli_reads_ms_cxr_layout_as_is(tiny_export, ms_cxr_table):
    from typer.testing import CliRunner

    from convirt_cli.cli.main import app

    r = CliRunner().invoke(app, ["evaluate", "grounding", str(ms_cxr_table), "--image-col", "dicom_id", "--text-col",
                                 "label_text", "--box-cols", "x,y,w,h", "--model", str(tiny_export), "--format", "json",
                                 "--bootstrap", "50"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert {"cnr", "miou", "pointing_game", "per_finding"} <= set(rep) and rep["per_finding"].keys() == {"thing"}
    n = len(ms_cxr_table.read_text().splitlines()) - 1
    assert rep["count"] + sum(rep["skipped"].values()) == n and rep["skipped"].get("no box", 0) >= 1
    r = CliRunner().invoke(app, ["evaluate", "grounding", str(ms_cxr_table), "--model", str(tiny_export)])
    assert isinstance(r.exception, ConvirtError) and "--mask-col" in str(r.exception)
