"""Fine-tuning and serving see the same pixels: a model's preprocessing (window, size, mean/std) travels with it
(model.json -> classifier.json -> preprocess.json), every command that reads pixels for it takes it from there, and
a flag that disagrees is a one-line error, not a second truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_dicom import _gray, write_dicom
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.preprocess import Preprocess

runner = CliRunner()
WINDOW = "fixed:1500,600"  # a narrow window of 12-bit values: far from what `auto` (percentiles) would show


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """24 12-bit DICOMs of 6 patients (sex alternating by patient) without a window of their own, and a run
    pretrained on them (SimCLR, 2 steps) under --window fixed:1500,600."""
    tmp = tmp_path_factory.mktemp("windowed")
    data = tmp / "archive"
    for i in range(24):
        sub = data / f"p{i // 4}"
        sub.mkdir(parents=True, exist_ok=True)
        write_dicom(sub / f"{i:03d}.dcm", 1000 + 8 * _gray(i, 80).astype(np.uint16), bits=12,
                    patient=f"anon-{i // 4}", sex="MF"[(i // 4) % 2])
    r = runner.invoke(app, ["pretrain", str(data), "--objective", "simclr", "--model", "tiny", "--max-steps", "2",
                            "--batch-size", "4", "--image-size", "32", "--window", WINDOW, "--out", str(tmp / "run"),
                            "--runs-dir", str(tmp / "runs"), "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return data, tmp / "run"


def test_the_window_makes_a_difference_here(windowed):
    """Guard for the test below: under the data's own `auto` window these images are other pixels."""
    data, _ = windowed
    path = data / "p0" / "000.dcm"
    own, auto = Preprocess(32, WINDOW, (0.5,), (0.5,), 1), Preprocess(32, "auto", (0.5,), (0.5,), 1)
    assert np.abs(own.decode(path).astype(int) - auto.decode(path).astype(int)).mean() > 20


def test_finetune_then_export_classifies_with_finetunes_own_pixels(windowed, tmp_path):
    """finetune (linear) decodes with the run's window; the classifier and its ONNX export carry it; the exported
    graph on the test images, decoded the torch-free way from preprocess.json, gives finetune's own test
    predictions. With finetune decoding under its own --window default (`auto`, as before) they differ by 0.02."""
    import onnxruntime as ort

    from convirt_cli.torch.finetune.results import read_predictions

    data, run = windowed
    r = runner.invoke(app, ["finetune", str(data), "--label", "sex", "--init", str(run), "--bootstrap", "0",
                            "--no-plot", "--out", str(tmp_path / "ft")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    record = json.loads((tmp_path / "ft" / "results.json").read_text())["records"][0]
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["window"] is None  # unset: the run's own
    clf = record["model_dir"]
    assert json.loads((tmp_path / "ft" / "models").joinpath(clf.split("/")[-1], "classifier.json").read_text())[
        "image"]["window"] == WINDOW
    r = runner.invoke(app, ["export", clf, "--onnx", "--out", str(tmp_path / "onnx")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    pre = Preprocess.from_json(json.loads((tmp_path / "onnx" / "preprocess.json").read_text()))
    assert pre.window == WINDOW and pre.image_size == 32
    sources, expected = read_predictions(record["predictions"])
    assert len(sources) == record["n_eval"] >= 4 and expected.shape == (len(sources), 2)
    pixels = pre.pixels(np.stack([pre.decode(data / s) for s in sources]))
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "classifier.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["scores"], {"pixels": pixels})[0]
    assert np.abs(got - expected).max() < 1e-4, np.abs(got - expected).max()


def test_a_window_flag_that_disagrees_with_the_model_is_one_line(windowed, tmp_path):
    data, run = windowed
    r = runner.invoke(app, ["finetune", str(data), "--label", "sex", "--init", str(run), "--window", "minmax",
                            "--out", str(tmp_path / "ft")])
    assert isinstance(r.exception, ConvirtError), r.output
    msg = str(r.exception)
    assert msg.startswith("--window minmax: run ") and f"reads its pixels with window {WINDOW}" in msg
    assert "\n" not in msg and not (tmp_path / "ft").exists()
    r = runner.invoke(app, ["finetune", str(data), "--label", "sex", "--init", "random", "--model", str(run),
                            "--window", "minmax", "--out", str(tmp_path / "ft")])
    assert isinstance(r.exception, ConvirtError) and "`random` copies its tower" in str(r.exception), r.output
    r = runner.invoke(app, ["pretrain", "--out", str(run), "--resume", "--window", "minmax", "--max-steps", "3"])
    assert isinstance(r.exception, ConvirtError) and str(r.exception).startswith("--window minmax: run "), r.output
    assert json.loads((run / "summary.json").read_text())["steps"] == 2  # nothing trained


def test_an_untrained_preset_takes_the_window_flag(tmp_path):
    from convirt_cli.torch.finetune.inits import init_image_config

    assert init_image_config("tiny", "tiny", None, WINDOW).window == WINDOW
    assert init_image_config("random", "tiny", 48, None).window == "auto"
    assert init_image_config("random", "tiny", 48, None).image_size == 48
