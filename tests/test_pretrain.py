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
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "convirt_cli", "pretrain", str(covid_csv)], check=False,
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"error: {covid_csv}: no column 'text' (columns: " + p.stderr.split("(columns: ")[1].split(")")[0]
        + "); pass --text-col NAME"]


class Kill(Exception):
    pass


class KillAt(NullReporter):
    """A reporter that 'kills' training right after step n (after its checkpoint was written)."""

    def __init__(self, n):
        self.n = n

    def step(self, step, m):
        if step == self.n:
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
