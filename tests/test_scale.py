"""Scale: GradCache (--accum-steps) gives the raw gradients of the whole batch at once; gradient
checkpointing gives the same loss and gradients as without; precision flags; refusals in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import COVID
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torch.losses import convirt_loss
from convirt_cli.torch.train.gradcache import cached_backward, split
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.registry import get_model_config

runner = CliRunner()


def test_split_covers_every_row():
    assert split(10, 3) == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert split(3, 8) == [slice(0, 1), slice(1, 2), slice(2, 3)]


def test_cached_backward_matches_the_whole_batch():
    """A toy pair of towers with dropout: the same loss and parameter gradients as one forward over all rows."""
    torch.manual_seed(0)
    img = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 4))
    txt = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 4))
    x, t = torch.randn(12, 6), torch.randn(12, 5)
    params = list(img.parameters()) + list(txt.parameters())

    def embed(xc, tc):
        return img(xc), txt(tc)

    def loss_fn(v, u):
        return convirt_loss(v, u, 0.1, 0.75)

    torch.manual_seed(1)  # dropout masks drawn chunk by chunk, as GradCache draws them
    chunks = [(x[s], t[s]) for s in split(12, 3)]
    loss = cached_backward(chunks, embed, loss_fn)
    cached = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    torch.manual_seed(1)
    outs = [embed(*c) for c in chunks]  # the same masks, with a graph through every chunk at once
    ref = loss_fn(torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]))
    ref.backward()
    assert torch.allclose(loss, ref.detach(), atol=1e-6)
    for a, p in zip(cached, params):
        assert torch.allclose(a, p.grad, atol=1e-6)


@pytest.mark.parametrize("objective", ["convirt", "simclr"])
def test_accum_steps_gives_the_raw_gradients_of_the_big_batch(objective):
    """One step's parameter gradients, compared raw (an AdamW step would hide a wrong scale: its first update is
    lr * sign(g)): the whole batch of 12 at once vs GradCache in 3 chunks of 4, for ConVIRT's image-text InfoNCE and
    SimCLR's NT-Xent over both views."""
    from gradcache_grads import grad_scale, max_diff, step_grads

    whole, cached = step_grads(objective, 1, 12), step_grads(objective, 3, 12)
    assert max_diff(whole, cached) <= 1e-5
    assert grad_scale(cached, whole) == pytest.approx(1.0, abs=1e-5)


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    from convirt_cli.torch.model import create_model

    cfg = get_model_config("tiny")
    texts = ["left pleural effusion. heart normal.", "no acute disease."] * 4
    model = create_model(cfg, texts=texts).train()
    tok = model.tokenizer(texts, padding=True, return_tensors="pt")
    x = torch.randn(8, 3, 64, 64)
    results = []
    for on in (False, True):
        model.set_grad_checkpointing(on)
        model.zero_grad()
        torch.manual_seed(3)  # dropout masks: the recomputation replays them
        v, u = model(x, tok["input_ids"], tok["attention_mask"])
        loss = convirt_loss(v, u, 0.1, 0.75)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = results
    assert l0 == pytest.approx(l1, abs=1e-6) and g0.keys() == g1.keys() and len(g0) > 10
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-5), n


def test_scale_flags_run_and_refuse_in_one_line(tmp_path):
    r = runner.invoke(app, ["pretrain", str(COVID), "--text-col", "report", "--batch-size", "4", "--max-steps", "2",
                            "--image-size", "32", "--grad-checkpointing", "--precision", "bf16", "--channels-last",
                            "--accum-steps", "2",
                            "--out", str(tmp_path / "run"), "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["precision"] == "bf16" and saved["grad_checkpointing"] and saved["sources"]["precision"] == "flag"
    assert saved["channels_last"] is True and saved["accum_steps"] == 2
    r = runner.invoke(app, ["pretrain", str(COVID), "--objective", "dino", "--accum-steps", "2",
                            "--runs-dir", str(tmp_path / "runs2")])
    assert isinstance(r.exception, ConvirtError) and "--objective dino does not split its batch" in str(r.exception)
    r = runner.invoke(app, ["pretrain", str(COVID), "--precision", "fp8"])
    assert isinstance(r.exception, ConvirtError) and str(r.exception).startswith("--precision fp8"), r.output


def test_channels_last_by_default_only_for_cnn_towers_on_cuda():
    """Measured on an H200: 2.0x samples/s for ResNet-50 + BERT-base at batch 256 (RESULTS.md, gpu_bench); slower
    on CPU, and a ViT has nothing to gain (one convolution)."""
    from convirt_cli.torch.towers import ImageTower
    from convirt_cli.torch.train.loop import use_channels_last
    from convirt_cli.torchfree.config import PretrainConfig

    cnn, vit = (ImageTower(get_model_config(name).image) for name in ("tiny", "dino-tiny"))
    assert cnn.convolutional and not vit.convolutional
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    auto, off, on = (PretrainConfig(data=COVID, channels_last=v) for v in (None, False, True))
    assert use_channels_last(auto, cuda, cnn) and not use_channels_last(auto, cuda, vit)
    assert not use_channels_last(auto, cpu, cnn) and not use_channels_last(off, cuda, cnn)
    assert use_channels_last(on, cpu, vit)  # as asked


def test_compile_puts_the_compiled_module_on_the_training_path(tmp_path, monkeypatch):
    """--compile: the same losses as without, from graphs torch.compile really captured. Inductor needs a C++
    toolchain and ~2 minutes of compiling on this CPU, so torch.compile gets a backend that records the graphs
    dynamo hands it and runs them as traced."""
    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: real(module, backend=recording))
    losses = {}
    try:
        for on in (False, True):
            out = tmp_path / f"run{on}"
            r = runner.invoke(app, ["pretrain", str(COVID), "--text-col", "report", "--batch-size", "4", "--max-steps",
                                    "2", "--image-size", "32", "--seed", "1", "--out", str(out), "--runs-dir",
                                    str(tmp_path / "runs"), "--device", "cpu", *(["--compile"] if on else [])])
            assert r.exit_code == 0, r.output + repr(r.exception)
            losses[on] = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
            assert on or not graphs  # nothing is compiled without the flag
    finally:
        torch._dynamo.reset()
    assert graphs, "--compile captured no graph: the compiled module is not what trains"
    assert losses[True] == pytest.approx(losses[False], rel=1e-5) and len(losses[True]) == 2


def test_embed_in_three_parts_and_merge_equals_one_embed(tiny_export, tmp_path):
    """`embed --parts 3 --part I` three times + `index merge` = one `embed` of the whole input, row for
    row (ids, paths, sources, embeddings); a missing part and parts of another model are one line each."""
    import numpy as np
    from conftest import EXAMPLES

    table = EXAMPLES / "pairs.csv"
    common = ["--model", str(tiny_export), "--kind", "image", "--runs-dir", str(tmp_path / "runs")]
    r = runner.invoke(app, ["embed", str(table), "--out", str(tmp_path / "whole"), *common])
    assert r.exit_code == 0, r.output
    for i in range(3):
        old = i == 2  # the old spellings still work, with one note
        r = runner.invoke(app, ["embed", str(table), "--out", str(tmp_path / f"part{i}"),
                                *(["--num-shards", "3", "--shard-index", str(i)] if old else ["--parts", "3", "--part",
                                                                                              str(i)]), *common])
        assert r.exit_code == 0, r.output
        assert ("--num-shards/--shard-index are now --parts/--part" in r.stderr) == old
    parts = [str(tmp_path / f"part{i}") for i in (2, 0, 1)]  # any order
    r = runner.invoke(app, ["index", "merge", *parts, "--out", str(tmp_path / "merged")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    whole, merged = tmp_path / "whole", tmp_path / "merged"
    assert (whole / "items.jsonl").read_text() == (merged / "items.jsonl").read_text()
    assert np.allclose(np.load(whole / "embeddings.npy"), np.load(merged / "embeddings.npy"), atol=1e-5)
    meta = json.loads((merged / "index.json").read_text())
    assert meta["count"] == 600 and meta["next_id"] == 600
    r = runner.invoke(app, ["index", "merge", parts[0], parts[1], "--out", str(tmp_path / "bad")])
    assert isinstance(r.exception, ConvirtError) and str(r.exception).endswith("parts [0, 2] of 3: part(s) [1] missing")
    r = runner.invoke(app, ["embed", str(table), "--out", str(tmp_path / "p"), "--parts", "3", "--part", "3", *common])
    assert isinstance(r.exception, ConvirtError) and "--part 3 is not one of 0..2" in str(r.exception)


@pytest.mark.slow
def test_accum_steps_under_two_process_torchrun(tmp_path):
    """2 gloo processes under DDP, 8 rows each (a global contrastive batch of 16): raw gradients of the plain step
    and of GradCache in 2 chunks per process agree, for ConVIRT and SimCLR."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("gradcache_grads.py")
    for objective in ("convirt", "simclr"):
        out = tmp_path / f"{objective}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
               objective, str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
            [str(script.parent), os.environ.get("PYTHONPATH", "")])}
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        got = json.loads(out.read_text())
        assert got["max_diff"] <= 1e-5 and got["scale"] == pytest.approx(1.0, abs=1e-5), (objective, got)


def _weight_codes(path) -> list:
    import onnx
    from onnx import numpy_helper

    return [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]  # conv kernels


def test_int8_image_weights_get_7_bits_only_with_room_under_the_gate(tiny_run, tiny_export, tmp_path, monkeypatch):
    """7-bit codes (|w| <= 64: u8 x s8 pairs cannot saturate int16, so CPUs without VNNI keep the signed kernels)
    when they stay well inside the gate, else 8 bits, with the 7-bit numbers that were turned down."""
    import onnx

    from convirt_cli.torch import export

    im = get_model_config(tiny_run).image
    pixels = export.random_pixels(im, np.random.default_rng(0), 48)
    for want, bar in ((7, export.SEVEN_BIT_MIN_COS), (8, 1.01)):  # cosine 1.01: 7 bits can never pass
        monkeypatch.setattr(export, "SEVEN_BIT_MIN_COS", bar)
        path = tmp_path / str(want) / "image.onnx"
        path.parent.mkdir()
        onnx.save(onnx.load(str(tiny_export / "image.onnx")), str(path))  # weights inline, as export has them here
        info = export.quantize_image(path, pixels[:32], pixels[32:])
        codes = _weight_codes(path)
        assert info["weight_bits"] == want and codes
        assert max(int(np.abs(c.astype(int)).max()) for c in codes) == (64 if want == 7 else 127)
        assert info["vs_fp32_graph"]["images"] == 16
        assert ("rejected" in info) == (want == 8)


def test_int8_image_export_is_gated_on_the_runs_own_images(tiny_run, tmp_path):
    """--int8-image: static int8 calibrated on 64 of the run's images, gated on others (cosine, top-10 overlap
    against torch); embed runs on it and ranks like torch."""
    import numpy as np

    r = runner.invoke(app, ["export", str(tiny_run), "--onnx", "--int8-image", "--out", str(tmp_path / "q")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    man = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert man["precision"]["image"] == "int8" and man["int8"]["image"]["calibrated_on"].endswith("run's images")
    gate = man["parity"]["image"]
    assert gate["precision"] == "int8" and gate["min_cosine"] >= 0.999 and gate["top10_overlap"] >= 0.9
    assert man["int8"]["image"]["weight_bits"] == 7  # well inside the gate here: the kernels every x86 runs exactly
    assert "parity image (int8, 7-bit weights)" in r.output
    images = sorted((COVID.parent / "images").glob("*.png"))[-40:]  # not the first ones the export sampled
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p}\n" for p in images))
    embs = {}
    for name, model in (("int8", tmp_path / "q"), ("torch", tiny_run)):
        r = runner.invoke(app, ["embed", str(lst), "--model", str(model), "--backend",
                                "onnx" if name == "int8" else "torch", "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        embs[name] = np.load(tmp_path / name / "embeddings.npy")
    assert float((embs["int8"] * embs["torch"]).sum(1).min()) > 0.995
