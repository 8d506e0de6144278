"""The objectives registry: a new objective is one class and one registration, made here from the test file alone and
trained end to end with `convirt pretrain --objective toy`; a class that does not implement the Objective hooks (a
misspelt hook, a missing one, GradCache declared but not done) is refused in one line before any data is read."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torch.data.dataset import Collate, make_dataset
from convirt_cli.torch.data.transforms import to_model_input
from convirt_cli.torch.model import save_model
from convirt_cli.torch.objectives import Objective, register
from convirt_cli.torchfree import objectives
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.objectives import ObjectiveSpec, register_objective

runner = CliRunner()
LOOP = Path(__file__).resolve().parents[1] / "convirt_cli" / "torch" / "train" / "loop.py"


class ToyObjective(Objective):
    """Pull every image's features towards zero: not useful, but a complete objective with a schedule of its own."""

    loss_label = "toy loss (mean squared feature)"

    def __init__(self, model, cfg, device, dist):
        super().__init__(model, cfg, device, dist)
        self.collate = Collate(None)
        self._ramp = None

    def dataset(self, rows, train, seed):
        im = self.model.cfg.image
        return make_dataset(rows, im.image_size, seed=seed, with_text=False, window=im.window, train=train)

    def trainable(self):
        return self.model

    def param_groups(self, lr, weight_decay):
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr,
                 "weight_decay": weight_decay}]

    def schedules(self, total_steps, steps_per_epoch):
        self._ramp = lambda s: s / total_steps
        return {"toy_ramp": self._ramp}

    def loss(self, net, batch, step, g):
        im = self.model.cfg.image
        x = to_model_input(batch["images"], im.mean, im.std, im.in_chans)
        feats = net.encode_image(x, normalize=False)
        return feats.pow(2).mean() * (1 + self._ramp(step)), {"toy_feature_norm": float(feats.detach().norm(dim=1).mean())}

    def validate(self, loader):
        return {}

    def learning(self, losses, warned_at, val):
        return {"collapsed": False, "first_loss": losses[0], "last_loss": losses[-1]}

    def save(self, run):
        save_model(self.model, run)


@pytest.fixture
def registry(monkeypatch):
    """Objectives registered in a test stay in that test."""
    monkeypatch.setattr(objectives, "_REGISTRY", dict(objectives._REGISTRY))


def test_a_toy_objective_from_the_test_file_trains_and_exports(registry, tmp_path):
    register("toy", needs_text=False, about="a test's objective")(ToyObjective)
    images = tmp_path / "images"  # a folder of 12 images, no reports: an image-only objective needs none
    images.mkdir()
    for p in sorted((EXAMPLES / "images").glob("*.png"))[:12]:
        (images / p.name).write_bytes(p.read_bytes())
    run = tmp_path / "run"
    r = runner.invoke(app, ["pretrain", str(images), "--objective", "toy", "--model", "tiny", "--max-steps", "2",
                            "--batch-size", "4", "--image-size", "32", "--out", str(run), "--runs-dir",
                            str(tmp_path / "runs"), "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "objective toy (flag)" in r.output, r.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["objective"] == "toy" and summary["steps"] == 2
    assert summary["learning"]["first_loss"] > 0
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [s["toy_ramp"] for s in steps] == [0.0, 0.5]  # its schedule, at loop level, logged with the step
    assert all("toy_feature_norm" in s for s in steps)
    model = json.loads((run / "model.json").read_text())
    assert model["text"] is None and model["projection"] is None  # the default towers: the image tower alone
    r = runner.invoke(app, ["export", str(run), "--onnx"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert json.loads((run / "onnx" / "manifest.json").read_text())["towers"] == ["image"]


def test_an_unknown_objective_is_one_line_listing_the_registered(registry):
    register("toy", needs_text=False)(ToyObjective)
    r = runner.invoke(app, ["pretrain", str(EXAMPLES), "--objective", "nope"])
    assert isinstance(r.exception, ConvirtError), r.output
    assert str(r.exception) == "--objective nope: not a registered objective (registered: convirt, dino, simclr, toy)"


class Misspelt(ToyObjective):
    def on_step_strat(self, step):  # meant as a hook: the loop would never call it
        raise AssertionError("never called")


class NoLoss(Objective):
    def dataset(self, rows, train, seed): ...
    def trainable(self): ...
    def param_groups(self, lr, weight_decay): ...
    def validate(self, loader): ...
    def learning(self, losses, warned_at, val): ...
    def save(self, run): ...


@pytest.mark.parametrize("cls,gradcache,message", [
    (Misspelt, False, "on_step_strat is not an Objective hook, so the loop would never call it"),
    (NoLoss, False, "does not define loss"),
    (ToyObjective, True, "registered with gradcache=True but does not define loss_and_backward"),
    (dict, False, "not a subclass of convirt_cli.torch.objectives.Objective"),
])
def test_a_class_that_does_not_implement_objective_is_refused_at_registration(registry, cls, gradcache, message):
    with pytest.raises(ConvirtError, match=message):
        register("bad", needs_text=False, gradcache=gradcache)(cls)
    assert "bad" not in objectives.list_objectives()


def test_a_class_registered_by_name_is_checked_before_the_data_is_read(registry, tmp_path):
    """A spec names its class lazily (the built-ins are "module:Class"); the run checks it before reading DATA."""
    register_objective(ObjectiveSpec("typo", f"{__name__}:Misspelt", needs_text=False))
    r = runner.invoke(app, ["pretrain", str(tmp_path / "no-such-data"), "--objective", "typo"])
    assert isinstance(r.exception, ConvirtError) and "on_step_strat is not an Objective hook" in str(r.exception)


def test_accum_steps_is_refused_for_an_objective_without_gradcache(registry, tmp_path):
    register("toy", needs_text=False)(ToyObjective)
    r = runner.invoke(app, ["pretrain", str(EXAMPLES), "--objective", "toy", "--accum-steps", "2"])
    assert isinstance(r.exception, ConvirtError), r.output
    assert "GradCache chunks (convirt, simclr); --objective toy does not split its batch" in str(r.exception)


def test_the_loop_never_probes_an_objective():
    """Every hook the loop calls is declared by Objective; nothing is looked up with hasattr / getattr."""
    calls = [n for n in ast.walk(ast.parse(LOOP.read_text())) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id in ("hasattr", "getattr")]
    probed = [ast.unparse(c) for c in calls if ast.unparse(c.args[0]) in ("obj", "self.obj", "objective")]
    assert not probed and not [c for c in calls if c.func.id == "hasattr"], [ast.unparse(c) for c in calls]
    used = {n.attr for n in ast.walk(ast.parse(LOOP.read_text())) if isinstance(n, ast.Attribute)
            and ast.unparse(n.value) in ("obj", "self.obj")}
    from convirt_cli.torch.objectives import HOOKS

    instance = {"module", "model", "batch_size"}  # set by Objective.__init__
    assert used and used <= HOOKS | instance, used - HOOKS - instance


def test_schedules_apply_at_loop_level_as_dinov2_does():
    """lr = base x lr multiplier (x last_layer_lr for the prototypes' groups), weight decay x each group's scale."""
    from convirt_cli.torch.train.schedule import apply_optimiser_schedules

    groups = [{"base_lr": 1e-3, "wd_scale": 1.0}, {"base_lr": 5e-4, "wd_scale": 0.0},
              {"base_lr": 1e-3, "wd_scale": 1.0, "last_layer": True}]
    apply_optimiser_schedules(groups, {"lr": 0.5, "weight_decay": 0.04, "last_layer_lr": 0.0})
    assert [g["lr"] for g in groups] == [5e-4, 2.5e-4, 0.0]
    assert [g["weight_decay"] for g in groups] == [0.04, 0.0, 0.04]
    apply_optimiser_schedules(groups, {"lr": 1.0})  # no weight-decay schedule: decay stays as it was
    assert [g["lr"] for g in groups] == [1e-3, 5e-4, 1e-3] and groups[0]["weight_decay"] == 0.04


def test_dino_prototypes_hold_still_for_the_first_epoch():
    """DINO's frozen last layer is a schedule (DINOv2's last_layer_lr): zero for freeze_last_layer_epochs, then 1."""
    from convirt_cli.torch.objectives.dino import DINOObjective
    from convirt_cli.torchfree.registry import DinoConfig

    obj = DINOObjective.__new__(DINOObjective)  # schedules need only the recipe
    obj.d, obj.cfg = DinoConfig(freeze_last_layer_epochs=1), type("C", (), {"weight_decay": 0.04})()
    s = obj.schedules(total_steps=100, steps_per_epoch=10)
    assert [s["last_layer_lr"](i) for i in (0, 9, 10, 99)] == [0.0, 0.0, 1.0, 1.0]
    assert s["weight_decay"](0) == pytest.approx(0.04) and s["weight_decay"](100) == pytest.approx(0.4)
    assert s["teacher_temp"](0) == pytest.approx(0.04) and s["teacher_temp"](30) == pytest.approx(0.07)
    assert torch.isclose(torch.tensor(s["momentum"](0)), torch.tensor(0.992))


def test_dino_prototypes_stay_put_in_the_first_epoch_while_the_rest_learns():
    """The loop's last_layer_lr schedule on DINO's own parameter groups: a step in the first epoch moves the backbone
    and head but not the prototypes (their gradients exist: DINOv2 freezes by lr, not by dropping them); a step
    after it moves them too."""
    from convirt_cli.torch.model import create_model
    from convirt_cli.torch.objectives.dino import DINOObjective
    from convirt_cli.torch.train.distributed import Dist
    from convirt_cli.torch.train.schedule import apply_optimiser_schedules
    from convirt_cli.torchfree.config import PretrainConfig
    from convirt_cli.torchfree.registry import get_model_config

    torch.manual_seed(0)
    cfg = PretrainConfig(data=Path("."), objective="dino", batch_size=4, device="cpu")
    obj = DINOObjective(create_model(get_model_config("dino-tiny")), cfg, torch.device("cpu"), Dist())
    schedules = obj.schedules(total_steps=10, steps_per_epoch=5)
    opt = torch.optim.AdamW(obj.param_groups(1e-3, 0.04))
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    last = {id(p) for p in obj.student.dino_head.last_layer_params()}
    images = torch.randint(0, 256, (4, 1, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for step, prototypes_move in ((0, False), (5, True)):
        before = {id(p): p.detach().clone() for p in obj.student.parameters()}
        apply_optimiser_schedules(opt.param_groups, {k: f(step) for k, f in schedules.items()} | {"lr": 1.0})
        opt.zero_grad()
        loss, _ = obj.loss(obj.student, {"images": images}, step, torch.Generator().manual_seed(step))
        loss.backward()
        opt.step()
        moved = {id(p) for p in obj.student.parameters() if not torch.equal(p.detach(), before[id(p)])}
        assert bool(moved & last) == prototypes_move and len(moved - last) > 10, (step, len(moved))
