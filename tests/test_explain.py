"""convirt explain: the dense graph's parity, the maps from ONNX and torch, the outputs and the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES
from typer.testing import CliRunner

from convirt_cli.cli.main import app

IMAGES = [str(EXAMPLES / "images" / f"{i:04d}.png") for i in (0, 1, 2)]


def test_export_writes_a_parity_checked_dense_graph(tiny_export):
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    dense = manifest["parity"]["image_dense"]
    assert (tiny_export / "image_dense.onnx").is_file() and dense["min_cosine"] >= 0.9999
    assert dense["max_abs_diff"] <= 1e-4


def test_dense_cells_share_the_pooled_embeddings_projection(tiny_run):
    """ResNet (mean pool): the pooled tower output is the mean of the grid, so cells and embedding live in one space."""
    import torch

    from convirt_cli.torch.model import load_model

    model = load_model(tiny_run).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        pooled, grid = model.image.features(x)
        embeds, cells = model.encode_dense(x)
        assert torch.allclose(pooled, grid.mean((2, 3)), atol=1e-5)
        assert torch.allclose(embeds, model.encode_image(x), atol=1e-6)
        one = torch.nn.functional.normalize(model.image_proj(grid[:, :, 1, 2]), dim=-1)
    assert cells.shape == (2, 4, 4, 64) and torch.allclose(cells[:, 1, 2], one, atol=1e-6)


def _explain(args, fmt="jsonl"):
    r = CliRunner().invoke(app, ["explain", *args, "--format", fmt])
    return r, [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def test_explain_onnx_and_torch_give_the_same_maps(tiny_run, tiny_export, tmp_path):
    q = ["--query", "left pneumothorax", "--query", "enlarged heart"]
    r, onnx = _explain([*IMAGES, *q, "--model", str(tiny_export), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert len(onnx) == 6 and {"image", "query", "peak_x", "peak_y", "peak_score", "map", "score"} <= set(onnx[0])
    r, torch_rows = _explain([*IMAGES, *q, "--model", str(tiny_run), "--backend", "torch", "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    for a, b in zip(onnx, torch_rows):
        assert (a["image"], a["query"]) == (b["image"], b["query"])
        np.testing.assert_allclose(np.load(a["map"]), np.load(b["map"]), atol=1e-4)
        assert 0 <= a["peak_x"] < 128 and 0 <= a["peak_y"] < 128  # the example images are 128 px
    heat = np.load(onnx[0]["map"])
    assert heat.shape == (96, 96) and heat.max() == pytest.approx(onnx[0]["peak_score"], abs=1e-5)


def test_explain_pictures_and_page(tiny_export, tmp_path):
    r, _ = _explain([IMAGES[0], "--query", "left pneumothorax", "--model", str(tiny_export), "--out",
                     str(tmp_path / "h")], fmt="html")
    assert r.exit_code == 0, r.output
    page = (tmp_path / "h" / "index.html").read_text()
    assert "left pneumothorax" in page and (tmp_path / "h" / "0000-0.png").is_file()
    from PIL import Image

    assert Image.open(tmp_path / "h" / "0000-0.png").size[0] > 128  # the square plus the scale bar


@pytest.mark.parametrize("args, words", [
    (["/nope.png", "--query", "x"], "/nope.png"),
    ([IMAGES[0], "--at", "1;2"], "--at 1;2"),
    ([IMAGES[0], "--at", "500,10"], "--at 500,10: outside"),
    ([IMAGES[0], "--query", " "], "--query"),
])
def test_explain_bad_input_is_one_line(tiny_export, tmp_path, args, words):
    r = CliRunner().invoke(app, ["explain", *args, "--model", str(tiny_export), "--out", str(tmp_path / "x")])
    from convirt_cli.torchfree.errors import ConvirtError

    assert isinstance(r.exception, ConvirtError) and words in str(r.exception), r.output
    assert "\n" not in str(r.exception)
