"""`convirt pretrain` end to end on real data: run directory complete and loadable, resume exact."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torch.model import load_model
from convirt_cli.torch.train.loop import NullReporter, pretrain
from convirt_cli.torchfree.config import PretrainConfig


def test_run_directory_is_complete_and_loadable(tiny_run):
    for part in ("config.json", "model.json", "metrics.jsonl", "summary.json", "heads.safetensors",
                 "image/model.safetensors", "image/config.json", "text/config.json", "text/tokenizer.json"):
        assert (tiny_run / part).is_file(), part
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["text_col"] == "report" and cfg["max_steps"] == 4
    records = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]

    import timm
    from transformers import AutoModel, AutoTokenizer

    text = AutoModel.from_pretrained(tiny_run / "text")
    tok = AutoTokenizer.from_pretrained(tiny_run / "text")
    image = timm.create_model(f"local-dir:{tiny_run / 'image'}", pretrained=True)
    model = load_model(tiny_run).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(image.eval()(x), model.image(x), atol=1e-6)
        ids = tok(["pleural effusion", "no finding here"], padding=True, return_tensors="pt")
        hidden = text(**ids).last_hidden_state
        assert torch.allclose(hidden, model.text.model(**ids).last_hidden_state, atol=1e-6)
        # reload twice gives identical embeddings
        again = load_model(tiny_run).eval()
        assert torch.equal(model.encode_image(x), again.encode_image(x))


def test_cli_pretrain_with_flags(tmp_path, covid_csv):
    r = CliRunner().invoke(app, ["pretrain", str(covid_csv), "--text-col", "report", "--max-steps", "2",
                                 "--batch-size", "8", "--runs-dir", str(tmp_path / "runs"), "--name", "r1",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "r1"
    assert (run / "loss.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "latest").read_text().strip() == str(run.resolve())


def test_unloadable_weights_are_one_error_and_leave_no_run(tmp_path, covid_csv, monkeypatch):
    from convirt_cli.torchfree.errors import ConvirtError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preset = json.loads((Path(__file__).resolve().parents[1] / "models" / "tiny.json").read_text())
    preset["text"] = {"source": "hf", "name": "no-such-org/no-such-text-model", "pooling": "max"}
    (tmp_path / "p.json").write_text(json.dumps(preset))
    cfg = PretrainConfig(data=covid_csv, text_col="report", model=str(tmp_path / "p.json"), max_steps=1,
                         runs_dir=tmp_path / "runs", device="cpu", plot=False)
    with pytest.raises(ConvirtError, match="no-such-org/no-such-text-model.*--text-weights"):
        pretrain(cfg)
    assert list((tmp_path / "runs").iterdir()) == []


def test_cli_user_mistake_is_one_line(tmp_path, covid_csv):
    import csv
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "convirt_cli", "pretrain", str(covid_csv)], check=False,
                       capture_output=True, text=True, cwd=tmp_path)
    with covid_csv.open() as f:
        columns = ", ".join(next(csv.reader(f)))
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"error: {covid_csv}: no column 'text' (columns: {columns}); pass --text-col NAME"]
    assert not (tmp_path / "runs").exists()


class Kill(Exception):
    pass


class KillAt(NullReporter):
    """A reporter that 'kills' training right after step n (after its checkpoint was written)."""

    def __init__(self, n):
        self.n = n

    def update(self, done, status):
        if done == self.n:
            raise Kill()


def test_resume_gives_the_same_weights(tmp_path, covid_csv):
    common = {"data": covid_csv, "text_col": "report", "batch_size": 8, "max_steps": 6, "checkpoint_every": 3,
                  "runs_dir": tmp_path / "runs", "device": "cpu", "plot": False, "val_fraction": 0.6, "seed": 1}
    straight = pretrain(PretrainConfig(out=tmp_path / "a", **common))
    with pytest.raises(Kill):
        pretrain(PretrainConfig(out=tmp_path / "b", **common), KillAt(3))
    resumed = pretrain(PretrainConfig(out=tmp_path / "b", resume=True, **common))
    a = load_file(str(straight / "heads.safetensors"))
    b = load_file(str(resumed / "heads.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ta = load_file(str(straight / "text" / "model.safetensors"))
    tb = load_file(str(resumed / "text" / "model.safetensors"))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    ia = load_file(str(straight / "image" / "model.safetensors"))
    ib = load_file(str(resumed / "image" / "model.safetensors"))
    assert all(torch.equal(ia[k], ib[k]) for k in ia)
    steps_b = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps_b[-1] == 6


COMMON = {"text_col": "report", "batch_size": 8, "image_size": 64, "device": "cpu", "plot": False,
          "val_fraction": 0.6, "seed": 1, "lr": 1e-3, "text_view": "report"}


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(x)]


class Warnings(NullReporter):
    def __init__(self):
        self.lines = []

    def warn(self, message):
        self.lines.append(message)


def test_resume_skips_a_damaged_or_missing_newest_checkpoint(tmp_path, covid_csv):
    """--resume falls back to the newest readable checkpoint by itself, says which it skipped and why, and the
    metrics log holds every step once."""
    cfg = PretrainConfig(data=covid_csv, out=tmp_path / "r", runs_dir=tmp_path / "runs", max_steps=6,
                         checkpoint_every=2, **COMMON)
    run = pretrain(cfg)
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-0000004", "step-0000006"]
    (ck / "step-0000006" / "model.safetensors").write_bytes(b"\0" * 100)  # damaged newest
    rep = Warnings()
    pretrain(PretrainConfig(out=run, resume=True, max_steps=8, runs_dir=tmp_path / "runs", data=covid_csv), rep)
    skips = [line for line in rep.lines if "checkpoint" in line]  # (a run this short also gets the collapse warning)
    assert len(skips) == 1 and skips[0].startswith("skipped checkpoint step-0000006: SafetensorError") \
        and skips[0].endswith("resuming from step-0000004")
    assert _steps(run) == list(range(1, 9))  # steps 5-6 replayed once, not logged twice
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    # the newest folder deleted by hand: `last` names a folder that is gone, the previous one is used
    import shutil

    shutil.rmtree(ck / "step-0000008")
    assert (ck / "last").read_text().strip() == "step-0000008"
    rep = Warnings()
    pretrain(PretrainConfig(out=run, resume=True, max_steps=9, runs_dir=tmp_path / "runs"), rep)  # no DATA: the run's
    assert _steps(run) == list(range(1, 10)) and not [line for line in rep.lines if "checkpoint" in line]


def test_failed_start_leaves_no_run_folder(tmp_path, covid_csv, monkeypatch):
    """Whatever fails between creating the run folder and the first step (here the first loss) removes it."""
    from convirt_cli.torch.objectives.convirt import ConVIRTObjective

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(ConVIRTObjective, "loss", boom)
    cfg = PretrainConfig(data=covid_csv, out=tmp_path / "runs" / "r", runs_dir=tmp_path / "runs", max_steps=3, **COMMON)
    with pytest.raises(RuntimeError, match="out of memory"):
        pretrain(cfg)
    assert not (tmp_path / "runs" / "r").exists() and not (tmp_path / "runs" / "latest").exists()
    r = CliRunner().invoke(app, ["pretrain", str(covid_csv), "--text-col", "report", "--runs-dir", str(tmp_path / "runs"),
                                 "--tau", "0"])
    assert r.exit_code != 0 and "--tau 0.0: input should be greater than 0" in str(r.exception)
    assert list((tmp_path / "runs").iterdir()) == []


def test_collapse_guard_warns_records_and_export_says_so(tmp_path, covid_csv):
    """A run that cannot learn (lr 1e-9) is warned about half way in, summary.json records it, and
    `export` of it says so."""
    rep = Warnings()
    run = pretrain(PretrainConfig(data=covid_csv, out=tmp_path / "r", runs_dir=tmp_path / "runs", max_steps=24,
                                  **COMMON | {"lr": 1e-9}), rep)
    assert rep.lines and "within 2% of ln(8) = 2.079" in rep.lines[0] and "step 12 of 24" in rep.lines[0]
    assert "--lr 1e-3" in rep.lines[0]
    learning = json.loads((run / "summary.json").read_text())["learning"]
    assert learning["collapsed"] and learning["warned"]["step"] == 12
    r = CliRunner().invoke(app, ["export", str(run), "--onnx"])
    assert r.exit_code == 0, r.output
    assert "did not learn" in r.output
    assert any("did not learn" in w for w in json.loads((run / "onnx" / "manifest.json").read_text())["warnings"])


def test_learning_run_is_not_flagged(example_run):
    learning = json.loads((example_run / "summary.json").read_text())["learning"]
    assert not learning["collapsed"] and learning["warned"] is None, learning


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path, covid_csv, sig, code):
    """Ctrl-C (to the whole process group, DataLoader workers included) or a scheduler's SIGTERM: a checkpoint at
    the current step, one line with the resume command, exit 128 + signal; the run is marked interrupted and
    export says so; --resume finishes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run, runs = tmp_path / "run", tmp_path / "runs"
    cmd = [sys.executable, "-m", "convirt_cli", "pretrain", str(covid_csv), "--text-col", "report", "--epochs", "500",
           "--batch-size", "8", "--image-size", "64", "--out", str(run), "--runs-dir", str(runs), "--device", "cpu",
           "--num-workers", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env=os.environ | {"COLUMNS": "200"})
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and len(_steps(run)) >= 3):
        time.sleep(0.2)
    os.killpg(p.pid, getattr(signal, sig))
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    last = err.strip().splitlines()[-1]
    summary = json.loads((run / "summary.json").read_text())
    step, total = summary["steps"], summary["total_steps"]
    assert last == (f"interrupted: {sig} at step {step} of {total}: checkpoint saved ({run}/checkpoints/"
                    f"step-{step:07d}). Resume with: convirt pretrain --out {run} --resume")
    assert "Traceback" not in err
    assert summary["status"] == "interrupted" and 3 <= step < total and summary["signal"] == sig
    assert not (runs / "latest").exists()  # `latest` names finished runs only
    r = CliRunner().invoke(app, ["export", str(run), "--onnx"])
    assert r.exit_code == 0 and f"was interrupted at step {step} of {total}" in r.output, r.output
    resumed = pretrain(PretrainConfig(out=run, resume=True, max_steps=step + 2, runs_dir=runs))
    assert _steps(resumed) == list(range(1, step + 3))
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


def test_plots_name_their_loss_and_draw_empty_axes_quietly(tmp_path, monkeypatch):
    """The loss plot's y axis names the objective's loss; nothing labelled (no step, no finished cell) draws empty
    axes without matplotlib's legend warning."""
    import warnings

    import matplotlib.axes

    from convirt_cli.torchfree.plots import data_efficiency, loss_curve

    labels = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel", lambda self, text, *a, **k: labels.append(text))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_curve([{"step": 1, "loss": 2.0}], tmp_path / "loss.png", "DINO + iBOT + KoLeo loss")
        loss_curve([], tmp_path / "empty.png")
        data_efficiency({"rows": [{"init": "random", "cells": {}}], "fractions": [0.1, 1.0], "split": "test",
                         "metric": "auc"}, tmp_path / "eff.png")
    assert labels[0] == "DINO + iBOT + KoLeo loss"
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("loss.png", "empty.png", "eff.png"))


def test_dry_run_checks_the_data_and_writes_nothing(tmp_path):
    """`--dry-run`: the data summary and the recipe a run would get (the same step budget), then nothing on disk."""
    from conftest import EXAMPLES

    r = CliRunner().invoke(app, ["pretrain", str(EXAMPLES), "--dry-run", "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    out = " ".join(r.output.split())
    assert "pairs found 600, usable 600" in out and "train 422 / val 87" in out
    # 422 pairs // batch 32 = 13 steps an epoch; the tiny preset's 500 steps at least -> 39 epochs
    assert "batch size 32 (default), 500 steps = 39 epochs" in out and "dry run: nothing written" in out
    assert not (tmp_path / "runs").exists()
