"""The training step never waits for the device: its record keeps tensors (loss, grad norm, DINO's statistics) that
the loop reads LOG_EVERY steps at a time in one transfer; every step still reaches metrics.jsonl, as numbers."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from conftest import EXAMPLES

from convirt_cli.torch.train import loop

SYNCS = ("item", "tolist", "__float__", "__bool__")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """24 of the example pairs, by absolute path (reading all 600 would be most of the test's time)."""
    import csv

    with open(EXAMPLES / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:24]
    out = tmp_path_factory.mktemp("pairs") / "pairs.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "text"])
        w.writeheader()
        w.writerows({"image": str(EXAMPLES / r["image"]), "text": r["text"]} for r in rows)
    return out


# the plain ConVIRT step runs in the next test; here its GradCache path, and DINO's multi-crop with iBOT masks
@pytest.mark.parametrize("objective,extra", [("convirt", {"image_size": 32, "accum_steps": 2}),
                                             ("dino", {"model": "dino-tiny"})])
def test_steps_do_not_sync_and_every_step_is_logged(pairs, tmp_path, monkeypatch, objective, extra):
    from convirt_cli.torchfree.config import PretrainConfig

    monkeypatch.setattr(loop, "log_interval", lambda device: 3)  # as on a GPU, in small
    calls: list[str] = []
    for name in SYNCS:  # called from convirt_cli's own code (torch's CPU optimiser reads its CPU step counts)
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            caller = sys._getframe(1).f_code.co_filename
            if "convirt_cli" in caller:
                calls.append(f"{_name} in {caller}:{sys._getframe(1).f_lineno}")
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    records, step = [], loop.Training.step

    def spy(self, batch):
        calls.clear()
        record = step(self, batch)
        records.append((list(calls), record))
        return record

    monkeypatch.setattr(loop.Training, "step", spy)
    run = loop.pretrain(PretrainConfig(data=pairs, objective=objective, out=tmp_path / "run", max_steps=5,
                                       batch_size=8, runs_dir=tmp_path / "runs", device="cpu", plot=False,
                                       val_fraction=0.0, **extra))
    assert len(records) == 5
    for syncs, record in records:
        assert syncs == [], syncs
        assert isinstance(record["loss"], torch.Tensor)
        if objective == "dino":
            assert isinstance(record["teacher_entropy"], torch.Tensor)
    from convirt_cli.torchfree.runs import read_jsonl

    steps = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    for r, (_, rec) in zip(steps, records):
        assert type(r["loss"]) is float and math.isfinite(r["loss"])
        assert r["loss"] == pytest.approx(float(rec["loss"]), rel=1e-6)


def test_a_non_finite_loss_stops_the_run_at_the_flush(pairs, tmp_path, monkeypatch):
    from convirt_cli.torchfree.config import PretrainConfig
    from convirt_cli.torchfree.errors import ConvirtError

    monkeypatch.setattr(loop, "log_interval", lambda device: 3)
    step = loop.Training.step

    def nan_at_2(self, batch):
        record = step(self, batch)
        if record["step"] == 2:
            record["loss"] = torch.tensor(float("nan"))
        return record

    monkeypatch.setattr(loop.Training, "step", nan_at_2)
    with pytest.raises(ConvirtError, match="loss became nan at step 1"):
        loop.pretrain(PretrainConfig(data=pairs, out=tmp_path / "run", max_steps=5, batch_size=8, image_size=32,
                                     runs_dir=tmp_path / "runs", device="cpu", plot=False, val_fraction=0.0))
