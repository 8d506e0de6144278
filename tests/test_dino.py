"""RAD-DINO's recipe piece by piece (teacher, EMA, schedules, masks, crops, parameter groups, head), then end to end:
a dino-tiny run on the example data learns without collapsing, and an image-only run works in every command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torch.data.multicrop import MultiCropParams, batch_masks, block_mask, block_shape, multicrop
from convirt_cli.torch.dino import DINOHead, Student, ema_update, load_head, make_teacher
from convirt_cli.torch.model import create_model
from convirt_cli.torch.objectives.dino import crop_params
from convirt_cli.torch.train.param_groups import vit_param_groups
from convirt_cli.torch.train.schedule import cosine_ramp, linear_warmup
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.registry import DinoConfig, get_model_config

runner = CliRunner()


def tiny_student(ibot: bool = True) -> Student:
    model = create_model("dino-tiny")
    d = get_model_config("dino-tiny").dino
    return Student(model.image, DINOHead(model.image.num_features, d.prototypes, 32, 16), None, ibot)


def test_teacher_gets_no_gradients_and_follows_the_ema():
    torch.manual_seed(0)
    student = tiny_student()
    teacher = make_teacher(student)
    x = torch.randn(2, 3, 64, 64)
    masks = torch.zeros(2, 64, dtype=torch.bool)
    masks[:, :10] = True
    cls, patches = student(x, masks)
    with torch.no_grad():
        t_cls, _ = teacher(x)
    (student.dino_head(cls).sum() + student.dino_head(patches).sum() + t_cls.sum() * 0).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.mask_token.grad is not None and student.mask_token.grad.abs().sum() > 0  # masked patches used it
    before = [p.detach().clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, 0.9)
    for b, t, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)


def test_teacher_targets_have_no_stochastic_depth():
    """dino-tiny's student drops paths (rate 0.1) in train mode; its teacher copy never does."""
    torch.manual_seed(0)
    student = tiny_student().train()
    teacher = make_teacher(student).train()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(student(x)[0], student(x)[0])  # the check below can fail
        assert torch.equal(teacher(x)[0], teacher(x)[0])


def test_schedules():
    assert cosine_ramp(0, 100, 0.992, 1.0) == pytest.approx(0.992)
    assert cosine_ramp(50, 100, 0.992, 1.0) == pytest.approx(0.996)
    assert cosine_ramp(100, 100, 0.992, 1.0) == pytest.approx(1.0)
    assert cosine_ramp(25, 100, 0.04, 0.4) == pytest.approx(0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert linear_warmup(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(30, 30, 0.04, 0.07) == linear_warmup(99, 30, 0.04, 0.07) == 0.07


def test_preset_grey_level_augmentations_reach_the_views():
    """dino.jitter_p / solarize_p (dino-tiny turns both off) are what the views get: a flat grey image stays flat and
    unchanged without them (no dark rim where a crop touches the image edge), is jittered with them, and
    solarisation inverts the second global view only."""
    grey = torch.full((16, 1, 72, 72), 200, dtype=torch.uint8)
    level = 200 / 255

    def views(**kw):
        d = DinoConfig(global_size=64, local_size=32, n_local=2, **kw)
        return multicrop(grey, torch.Generator().manual_seed(0), crop_params(d))

    def flat(v, value):
        return torch.allclose(v, torch.full_like(v, value), atol=1e-4)

    assert all(flat(v, level) for v in views(jitter_p=0.0, solarize_p=0.0))
    assert all(not flat(v[i], level) for v in views(jitter_p=1.0, solarize_p=0.0) for i in range(len(v)))
    g1, g2, *locals_ = views(jitter_p=0.0, solarize_p=1.0)
    assert flat(g1, level) and flat(g2, 1 - level) and all(flat(v, level) for v in locals_)
    preset = get_model_config("dino-tiny").dino
    assert (preset.jitter_p, preset.solarize_p) == (0.0, 0.0) and DinoConfig().solarize_p == 0.2


def test_block_masks_hit_their_ratio_on_their_share_of_images():
    rng = np.random.default_rng(0)
    m = block_mask(14, 14, 60, rng)
    assert m.sum() == 60  # never more than asked; the rectangles fill it exactly here
    masks = batch_masks(8, 14, 14, (0.1, 0.5), 0.5, np.random.default_rng(1)).numpy()
    ratios = sorted(masks.mean(1))
    assert masks.shape == (8, 196) and ratios[:4] == [0, 0, 0, 0]  # half the images unmasked
    assert all(0.09 <= r <= 0.51 for r in ratios[4:])
    # blocks, not salt and pepper: most masked patches have a masked neighbour
    grid = masks[masks.sum(1) > 0][0].reshape(14, 14)
    neighbours = np.zeros_like(grid)
    neighbours[1:] |= grid[:-1]
    neighbours[:-1] |= grid[1:]
    neighbours[:, 1:] |= grid[:, :-1]
    neighbours[:, :-1] |= grid[:, 1:]
    assert (grid & neighbours).sum() >= 0.8 * grid.sum()


def test_mask_ratios_are_drawn_within_their_bins_and_blocks_stay_inside_the_grid():
    """DINOv2's collate: the i-th masked crop's ratio is uniform within the i-th bin of (0.1, 0.5), not its left edge;
    MaskingGenerator: a block is strictly smaller than the grid both ways."""
    side, seen = 20, []
    for seed in range(40):  # 4 crops, 2 masked: one ratio within (0.1, 0.3), the other within (0.3, 0.5)
        counts = sorted(batch_masks(4, side, side, (0.1, 0.5), 0.5, np.random.default_rng(seed)).numpy().sum(1))
        assert counts[:2] == [0, 0] and 40 <= counts[2] <= 120 <= counts[3] <= 200
        seen += counts[2:]
    assert len(set(seen)) > 20  # spread within the bins: the left edges alone would give {40, 120}
    rng = np.random.default_rng(4)
    shapes = [block_shape(4, 6, 12, rng) for _ in range(2000)]
    fits = [s for s in shapes if s is not None]
    assert fits and all(bh < 4 and bw < 6 for bh, bw in fits)


def test_multicrop_views():
    images = torch.randint(0, 256, (3, 1, 80, 80), dtype=torch.uint8)
    p = MultiCropParams(global_size=64, local_size=32, n_local=4)
    views = multicrop(images, torch.Generator().manual_seed(0), p)
    assert [v.shape for v in views] == [(3, 1, 64, 64)] * 2 + [(3, 1, 32, 32)] * 4
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in views)
    again = multicrop(images, torch.Generator().manual_seed(0), p)
    assert all(torch.equal(a, b) for a, b in zip(views, again))  # a resumed run replays its views


def test_layerwise_lr_decay_and_no_decay_groups():
    student = tiny_student()
    groups = vit_param_groups(student, lr=1.0, weight_decay=0.04, depth=4, layer_decay=0.5, patch_embed_lr_mult=0.2)
    by_name = {}
    for g in groups:
        for p in g["params"]:
            by_name[id(p)] = g
    named = dict(student.named_parameters())
    lr = {n: by_name[id(p)]["lr"] for n, p in named.items() if p.requires_grad}
    wd = {n: by_name[id(p)]["weight_decay"] for n, p in named.items() if p.requires_grad}
    blk = "backbone.model.blocks.{}.attn.qkv.weight"
    assert [lr[blk.format(i)] for i in range(4)] == pytest.approx([0.5 ** 4, 0.5 ** 3, 0.5 ** 2, 0.5])
    assert lr["backbone.model.patch_embed.proj.weight"] == pytest.approx(0.5 ** 5 * 0.2)
    assert lr["dino_head.mlp.0.weight"] == pytest.approx(1.0)
    assert wd["backbone.model.blocks.0.attn.qkv.weight"] == 0.04
    assert wd["backbone.model.blocks.0.attn.qkv.bias"] == 0.0 and wd["backbone.model.cls_token"] == 0.0
    assert wd["backbone.model.blocks.0.norm1.weight"] == 0.0 and wd["mask_token"] == 0.0


def test_dino_head_logits_are_cosines_and_a_released_head_loads(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    head = DINOHead(16, 50, hidden=32, bottleneck=8)
    logits = head(torch.randn(10, 16) * 100)
    assert logits.abs().max() <= 1.0 + 1e-5  # unit prototypes . unit bottleneck, the norm starting at 1
    g = head.last_layer.parametrizations.weight.original0
    assert g.requires_grad and any(p is g for p in head.last_layer_params())  # DINOv2 trains it (v1 froze it)
    groups = vit_param_groups(head, lr=1.0, weight_decay=0.04, depth=0)
    assert [grp["weight_decay"] for grp in groups if any(p is g for p in grp["params"])] == [0.04]  # and decays it
    # DINOv2's layout (weight_g / weight_v, a prefix): what microsoft/rad-dino's dino_head.safetensors holds
    other = DINOHead(16, 50, hidden=32, bottleneck=8)
    state = {}
    for k, v in other.state_dict().items():
        k = k.replace("last_layer.parametrizations.weight.original0", "last_layer.weight_g").replace(
            "last_layer.parametrizations.weight.original1", "last_layer.weight_v")
        state["dino_head." + k] = v.contiguous()
    save_file(state, str(tmp_path / "dino_head.safetensors"))
    load_head(head, tmp_path / "dino_head.safetensors")
    x = torch.randn(4, 16)
    assert torch.allclose(head(x), other(x))
    with pytest.raises(ConvirtError, match="does not fit this preset's DINO head"):
        load_head(DINOHead(16, 60, hidden=32, bottleneck=8), tmp_path / "dino_head.safetensors")


def test_ibot_needs_a_vit_and_says_so(tmp_path):
    r = runner.invoke(app, ["pretrain", str(EXAMPLES), "--objective", "dino", "--model", "tiny", "--max-steps", "1",
                            "--runs-dir", str(tmp_path / "runs")])
    assert isinstance(r.exception, ConvirtError) and "is not a ViT" in str(r.exception), r.output
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_images_smaller_than_the_crops_are_named_once(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "small"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(folder / f"{i}.png")
    r = runner.invoke(app, ["pretrain", str(folder), "--objective", "dino", "--max-steps", "1", "--batch-size", "4",
                            "--val-fraction", "0", "--out", str(tmp_path / "run"), "--runs-dir", str(tmp_path / "runs"),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    warning = "some images are smaller than the 64 px global crops (the smallest: 40 px)"
    assert r.output.count(warning) == 1, r.output


def test_a_dino_run_is_named_after_its_model(tmp_path):
    """`pretrain DATA --objective dino` trains dino-tiny: its new folder says so (it said `tiny-...`)."""
    from convirt_cli.torch.train.distributed import Dist
    from convirt_cli.torch.train.run_config import find_run, new_run, resolve_config
    from convirt_cli.torchfree.config import PretrainConfig

    cfg = PretrainConfig(data=EXAMPLES, objective="dino", runs_dir=tmp_path / "runs")
    assert find_run(cfg) is None
    cfg = resolve_config(cfg, None)
    assert new_run(cfg, Dist(0, 1), torch.device("cpu")).name.startswith("dino-tiny-")


def test_image_only_bad_inputs_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["pretrain", str(tmp_path / "empty"), "--objective", "dino"])
    assert isinstance(r.exception, ConvirtError) and "no images inside" in str(r.exception)
    (tmp_path / "t.csv").write_text("path,text\na.png,x\n")
    r = runner.invoke(app, ["pretrain", str(tmp_path / "t.csv"), "--objective", "dino"])
    assert isinstance(r.exception, ConvirtError) and "no column 'image'" in str(r.exception)


# ---------------------------------------------------------------- end to end on the example data

def test_dino_tiny_teacher_does_not_collapse(dino_run):
    """No flags but --objective: the dino-tiny recipe on the example data. Its teacher stays between a tenth of
    log K (not one prototype for everything) and 0.9 log K (not the same flat distribution for every image), uses
    more than a couple of prototypes, and the student predicts it across views (its DINO loss well below
    log K): seen on 2 CPU cores, teacher entropy 0.58 log K and DINO loss 0.67 log K over the
    last steps. With DINOv2's grey-level augmentations or its teacher temperature it flattens to log K
    (benchmarks/RESULTS.md)."""
    summary = json.loads((dino_run / "summary.json").read_text())
    learning = summary["learning"]
    d = get_model_config(dino_run).dino
    log_k = math.log(d.prototypes)
    assert summary["status"] == "complete" and summary["objective"] == "dino"
    assert learning["log_prototypes"] == round(log_k, 4)
    assert 0.1 * log_k < learning["teacher_entropy"] < 0.9 * log_k, learning
    assert learning["prototypes_in_use"] >= 4 / d.prototypes and not learning["collapsed"], learning
    assert "message" not in learning
    records = [json.loads(x) for x in (dino_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    for key in ("dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy", "prototypes_in_use", "momentum",
                "teacher_temp", "lr", "weight_decay"):
        assert key in steps[-1], key
    cross_view = float(np.mean([r["dino_loss"] for r in steps[-20:]]))
    assert cross_view < 0.8 * log_k, (cross_view, log_k)
    print(f"\nteacher entropy {learning['teacher_entropy'] / log_k:.2f} log K, prototypes in use "
          f"{learning['prototypes_in_use']:.2f}, DINO loss {cross_view / log_k:.2f} log K")
    assert steps[0]["teacher_temp"] == pytest.approx(d.warmup_teacher_temp)
    assert steps[-1]["teacher_temp"] == pytest.approx(d.teacher_temp)
    assert steps[-1]["momentum"] > steps[0]["momentum"]
    for part in ("image/config.json", "image/model.safetensors", "dino_head.safetensors", "model.json"):
        assert (dino_run / part).is_file(), part
    assert not (dino_run / "text").exists() and json.loads((dino_run / "model.json").read_text())["text"] is None


def test_dino_tower_beats_the_untrained_one_in_a_linear_probe(dino_run, tmp_path):
    """Linear probe of the finding (6 classes) on the example data's split: DINO tower vs dino-tiny untrained (with no
    --model, `random` is the run's own tower untrained, not the default `tiny` CNN)."""
    r = runner.invoke(app, ["finetune", str(EXAMPLES), "--init", f"{dino_run},random",
                            "--label", "finding", "--bootstrap", "0", "--no-save-models", "--no-plot",
                            "--out", str(tmp_path / "ft")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    table = json.loads((tmp_path / "ft" / "table.json").read_text())
    auc = {row["init"]: row["cells"]["1.0"]["mean"] for row in table["rows"]}
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["random_model"] == str(dino_run)
    trained, untrained = auc[dino_run.name], auc["random(dino-tiny)"]
    assert trained > untrained + 0.03, auc  # seen on 2 CPU cores: 0.76 vs 0.71


def test_image_only_run_everywhere_an_image_tower_goes(dino_run, tmp_path, covid_csv):
    """export (image graph only), embed images, image->image retrieve, evaluate retrieval image->image, the covid-cxr
    sex probe on the DINO tower; text commands stop with one line."""
    r = runner.invoke(app, ["export", str(dino_run), "--onnx", "--out", str(tmp_path / "onnx")])
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert man["towers"] == ["image"] and not (tmp_path / "onnx" / "text.onnx").exists()
    r = runner.invoke(app, ["embed", str(EXAMPLES), "--model", str(tmp_path / "onnx"), "--out", str(tmp_path / "idx"),
                            "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    query = EXAMPLES / "images" / "0001.png"
    r = runner.invoke(app, ["retrieve", "--image", str(query), "--index", str(tmp_path / "idx"), "-k", "1",
                            "--format", "paths"])
    assert r.exit_code == 0 and r.stdout.strip() == str(query.resolve()), r.output
    for args in (["retrieve", "--query", "effusion", "--index", str(tmp_path / "idx")],
                 ["embed", str(EXAMPLES), "--kind", "text", "--model", str(dino_run), "--out", str(tmp_path / "t")],
                 ["classify", str(EXAMPLES), "--label-col", "finding", "--model", str(tmp_path / "onnx")],
                 ["export", str(dino_run), "--onnx", "--int8-text", "--out", str(tmp_path / "x")]):
        r = runner.invoke(app, args)
        assert isinstance(r.exception, ConvirtError) and ("image-only" in str(r.exception)), (args, r.output)
    r = runner.invoke(app, ["evaluate", "retrieval", str(EXAMPLES), "--label-col", "finding", "--model",
                            str(tmp_path / "onnx"), "--format", "json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert "image_to_image" in rep and "text_to_image" not in rep and rep["text_to_image_skipped"]
    r = runner.invoke(app, ["finetune", str(covid_csv), "--label", "sex", "--init", str(dino_run), "--bootstrap", "20",
                            "--no-save-models", "--no-plot", "--out", str(tmp_path / "sex")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    rec = json.loads((tmp_path / "sex" / "results.json").read_text())["records"][0]
    assert 0 <= rec["test"]["auc"] <= 1 and rec["n_eval"] > 0


def test_convirt_from_a_dino_run_and_simclr(dino_run, tmp_path):
    """RAD-DINO then text alignment: ConVIRT's image tower starts as the DINO run's; SimCLR trains image-only."""
    from convirt_cli.torch.model import load_model
    from convirt_cli.torch.train.loop import pretrain
    from convirt_cli.torchfree.config import PretrainConfig

    run = pretrain(PretrainConfig(data=EXAMPLES, image_init=dino_run, max_steps=2, batch_size=8, lr=1e-5, out=tmp_path / "c",
                                  runs_dir=tmp_path / "runs", plot=False, device="cpu"))
    model = load_model(run)
    assert model.has_text and model.cfg.image == get_model_config(dino_run).image
    dino_tower = load_model(dino_run).image
    start = load_model(tmp_path / "c")  # 2 small steps from the DINO weights: close to them, not random
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(dino_tower.eval()(x), start.image.eval()(x)).min()
    assert cos > 0.9
    run = pretrain(PretrainConfig(data=EXAMPLES, objective="simclr", max_steps=3, batch_size=8, out=tmp_path / "s",
                                  runs_dir=tmp_path / "runs", plot=False, device="cpu"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["objective"] == "simclr" and not load_model(run).has_text


def test_raddino_shaped_tower_continues_with_its_released_head(tmp_path):
    """A transformers Dinov2Model (rad-dino's class, built from a small config: no download) saved with a
    dino_head.safetensors in DINOv2's layout beside it: pretrain continues from both, then export and embed."""
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    from convirt_cli.torch.train.loop import pretrain
    from convirt_cli.torchfree.config import PretrainConfig

    torch.manual_seed(0)
    weights = tmp_path / "rad-dino"
    Dinov2Model(Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
                             patch_size=14, image_size=56)).save_pretrained(weights)
    preset = json.loads((Path(__file__).resolve().parents[1] / "models" / "raddino-vitb14.json").read_text())
    preset["image"] = preset["image"] | {"image_size": 56, "hf_config": None}
    preset["dino"] = {"prototypes": 64, "head_hidden": 32, "head_bottleneck": 16, "global_size": 56,
                      "local_size": 28, "n_local": 2}
    (tmp_path / "p.json").write_text(json.dumps(preset))
    released = DINOHead(48, 64, hidden=32, bottleneck=16)
    state = {k.replace("last_layer.parametrizations.weight.original0", "last_layer.weight_g").replace(
        "last_layer.parametrizations.weight.original1", "last_layer.weight_v"): v.contiguous()
        for k, v in released.state_dict().items()}
    save_file(state, str(weights / "dino_head.safetensors"))
    run = pretrain(PretrainConfig(data=EXAMPLES, model=str(tmp_path / "p.json"), image_weights=weights, max_steps=2,
                                  batch_size=4, out=tmp_path / "run", runs_dir=tmp_path / "runs", plot=False,
                                  device="cpu"))
    assert json.loads((run / "summary.json").read_text())["objective"] == "dino"
    from safetensors.torch import load_file

    saved = load_file(str(run / "dino_head.safetensors"))  # prototypes frozen in the first epoch: still the released
    assert torch.allclose(saved["last_layer.weight_v"], state["last_layer.weight_v"], atol=1e-6)
    r = runner.invoke(app, ["export", str(run), "--onnx"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["embed", str(EXAMPLES / "images" / "0001.png"), "--model", str(run), "--out",
                            str(tmp_path / "idx"), "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["dim"] == 48
