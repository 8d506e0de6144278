"""On a GPU, `convirt pretrain`'s own loop (data loader, augmentation, loss, AdamW) timed per step. ONE JSON line
per part:

    python benchmarks/gpu_bench.py --part throughput   # R50 + BERT-base, bf16: batch x channels-last, eager
    python benchmarks/gpu_bench.py --part compile      # the same at the largest batch under torch.compile
    python benchmarks/gpu_bench.py --part memory       # peak CUDA memory vs batch, --grad-checkpointing, GradCache
    python benchmarks/gpu_bench.py --part dino         # RAD-DINO ViT-B/14, 2 x 518 + 8 x 224 crops
    python benchmarks/gpu_bench.py --part bare         # the model step alone on synthetic tensors: the ceiling
    python benchmarks/gpu_bench.py --part all          # issue 28's figures, one JSON line per part (guarded)
    python benchmarks/gpu_bench.py --part all --device cpu --smoke   # a check that every part runs

ConVIRT's towers: ResNet-50 (timm) and a 12-layer, 768-wide BERT built from a config (no download), reports
cut at 128 tokens, projection 2048 -> 512. The data are the example pairs copied `--repeat` times, each copy with
its own image files (pretrain drops a repeated pair), all `train`: one epoch spans many steps, so the loader's
restart and the checkpoint at each epoch's end are not what is timed; images are 128 px PNGs resized to 224, so
the decoder is not the bottleneck either. samples/s counts the steps after `--warmup` (compilation included
there). `--device cpu` runs the `tiny` preset instead: a smoke test (`--batches 4 --steps 3`), and GradCache's
CPU cost in RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from timing import make_timer, rate  # benchmarks/ is sys.path[0] when a benchmark runs as a script

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"


def repeated_data(tmp: Path, times: int) -> Path:
    """The example pairs `times` over, every row `train` (no validation pass inside the timed steps)."""
    out = tmp / "data"
    out.mkdir()
    with open(EXAMPLES / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "text", "split"])
        w.writeheader()
        for k in range(times):  # each copy its own files: pretrain drops a repeated (image, text) pair
            shutil.copytree(EXAMPLES / "images", out / f"copy{k}")
            w.writerows({"image": f"copy{k}/{Path(r['image']).name}", "text": r["text"], "split": "train"} for r in rows)
    return out


def convirt_preset(tmp: Path, small: bool) -> str:
    from convirt_cli.torchfree.registry import get_model_config

    cfg = get_model_config("tiny")
    if small:  # the smoke test: the tiny preset itself
        path = tmp / "tiny.json"
        path.write_text(cfg.model_copy(update={"train": {}}).model_dump_json())
        return str(path)
    image = cfg.image.model_copy(update={"name": "resnet50", "kwargs": {}, "image_size": 224})
    text = cfg.text.model_copy(update={"hf_config": cfg.text.hf_config | {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
        "vocab_size": 8000, "max_length": 128})
    proj = cfg.projection.model_copy(update={"hidden": 2048, "dim": 512})
    path = tmp / "convirt-r50-bert.json"
    path.write_text(cfg.model_copy(update={"name": "convirt-r50-bert", "image": image, "text": text,
                                           "projection": proj, "train": {}}).model_dump_json())
    return str(path)


class Bench:
    def __init__(self, a, tmp: Path):
        self.a, self.tmp, self.n = a, tmp, 0
        self.cuda = a.device == "cuda"
        self.data = repeated_data(tmp, a.repeat)

    def run(self, batch: int, steps: int, warmup: int, **kw) -> dict:
        """One fresh `pretrain`: samples/s over the steps after `warmup`, and peak memory."""
        from convirt_cli.torch.train.loop import pretrain
        from convirt_cli.torchfree.config import PretrainConfig

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        timer = make_timer(torch.cuda.synchronize if self.cuda else None)
        self.n += 1
        t0 = time.perf_counter()
        pretrain(PretrainConfig(data=self.data, out=self.tmp / f"r{self.n}", runs_dir=self.tmp / "runs",
                                device=self.a.device, plot=False, epochs=1000, checkpoint_every=0,
                                val_fraction=0.0, batch_size=batch, max_steps=warmup + steps,
                                num_workers=self.a.workers, **kw), timer)
        contrastive = batch * kw.get("accum_steps", 1)
        per_s, timed = timer.per_s(contrastive, warmup)
        row = {"samples_per_s": round(per_s, 1), "s_per_step": round(contrastive / per_s, 4), "steps_timed": timed,
               "wall_s": round(time.perf_counter() - t0, 1)}
        if self.cuda:
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(json.dumps({"batch": batch} | kw | row), flush=True)  # progress, in case a later run fails
        return row


def part_throughput(b: Bench, preset: str, batches: list[int]) -> dict:
    return {f"b{batch}{'_channels_last' if cl else ''}": b.run(batch, b.a.steps, b.a.warmup, model=preset, lr=1e-4,
                                                               channels_last=cl)
            for batch in batches for cl in (False, True)}


def part_compile(b: Bench, preset: str, batches: list[int]) -> dict:
    top = batches[-1]  # compilation is in the warm-up steps, which are not timed
    return {f"b{top}_compile{'_channels_last' if cl else ''}": b.run(top, b.a.steps, b.a.warmup, model=preset,
                                                                     lr=1e-4, channels_last=cl, compile=True)
            for cl in (False, True)}


def part_bare(a, preset: str, batches: list[int], layouts: tuple[bool, ...] = (False, True)) -> dict:
    """The model step alone (pretrain_bench's bare step: synthetic tensors, no loader, augmentation or metrics):
    the loop's ceiling."""
    from pretrain_bench import bare

    from convirt_cli.torch.model import create_model

    with open(EXAMPLES / "pairs.csv", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    out = {}
    for batch in batches:
        for cl in layouts:
            torch.manual_seed(0)
            model = create_model(preset, texts=texts).to(a.device)
            key = f"b{batch}{'_channels_last' if cl else ''}"
            size = model.cfg.image.image_size
            out[key] = {"samples_per_s": round(bare(model, batch, size, a.steps, a.warmup, a.device, cl), 1)}
            print(json.dumps({"batch": batch, "channels_last": cl} | out[key]), flush=True)
    return out


def part_memory(b: Bench, preset: str, batches: list[int]) -> dict:
    a, out = b.a, {}
    for batch in batches:
        for ckpt in (False, True):
            out[f"b{batch}{'_grad_ckpt' if ckpt else ''}"] = b.run(batch, a.steps, a.warmup, model=preset, lr=1e-4,
                                                                  grad_checkpointing=ckpt)
    sub = batches[len(batches) // 2]
    for k in (2, 4):  # GradCache: a k x sub contrastive batch at sub's memory, one extra forward per chunk
        out[f"b{sub}_accum{k}"] = b.run(sub, a.steps, a.warmup, model=preset, lr=1e-4, accum_steps=k)
    return out


def part_dino(b: Bench, batch: int) -> dict:
    a = b.a
    model = "dino-tiny" if a.device == "cpu" else "raddino-vitb14"
    return {f"{model}{'_grad_ckpt' if ckpt else ''}": b.run(batch, a.steps, a.warmup, objective="dino", model=model,
                                                            grad_checkpointing=ckpt) for ckpt in (False, True)}


def part_pretrain(b: Bench, preset: str, batch: int) -> dict:
    """The loop against the bare step at the same batch (channels-last on CUDA, as pretrain's default): goal >= 0.9."""
    cl = b.cuda
    loop = b.run(batch, b.a.steps, b.a.warmup, model=preset, lr=1e-4, channels_last=cl)
    bare = part_bare(b.a, preset, [batch], layouts=(cl,))[f"b{batch}{'_channels_last' if cl else ''}"]
    return {"loop": loop, "bare": bare, "loop_over_bare": round(loop["samples_per_s"] / bare["samples_per_s"], 3)}


def part_accum(b: Bench, preset: str, batch: int) -> dict:
    """GradCache: one contrastive batch of `batch` in 4 chunks against the same batch at once, per sample
    (goal <= 1.4x the time)."""
    one = b.run(batch, b.a.steps, b.a.warmup, model=preset, lr=1e-4)
    four = b.run(batch // 4, b.a.steps, b.a.warmup, model=preset, lr=1e-4, accum_steps=4)
    return {"at_once": one, "accum4": four,
            "time_per_sample_accum4_over_at_once": round(one["samples_per_s"] / four["samples_per_s"], 3)}


def part_compile_pair(b: Bench, preset: str, batch: int) -> dict:
    off = b.run(batch, b.a.steps, b.a.warmup, model=preset, lr=1e-4)
    on = b.run(batch, b.a.steps, b.a.warmup, model=preset, lr=1e-4, compile=True)  # compiling: warm-up steps
    return {"eager": off, "compile": on, "compile_over_eager": round(on["samples_per_s"] / off["samples_per_s"], 3)}


def serving_run(tmp: Path, small: bool) -> Path:
    """A ConVIRT run to export: ResNet-50 (224 px) + BERT-base from configs (the `tiny` preset when small)."""
    from convirt_cli.torch.model import create_model, save_model
    from convirt_cli.torchfree.files import write_json
    from convirt_cli.torchfree.registry import get_model_config

    with open(EXAMPLES / "pairs.csv", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    torch.manual_seed(0)
    preset = "tiny" if small else get_model_config(convirt_preset(tmp, False))
    run = tmp / "serve_run"
    save_model(create_model(preset, texts=texts), run)
    write_json(run / "config.json", {"data": str(EXAMPLES), "image_col": "image"})
    return run


def serving_export(tmp: Path, small: bool) -> tuple[Path, dict]:
    """serving_run exported once (fp16 on a GPU, fp32 on CPU), for the embed and text parts."""
    from convirt_cli.torch.export import export_onnx
    from convirt_cli.torchfree.files import read_json

    out = tmp / "onnx_serve"
    if (out / "manifest.json").is_file():
        return out, read_json(out / "manifest.json")
    return export_onnx(serving_run(tmp, small), out, fp16=not small)


def part_embed(a, tmp: Path, small: bool) -> dict:
    """`embed`'s path (encode_images: decode workers + the model) against the model alone on one fixed batch, the
    fp16 export on onnxruntime's CUDA provider (fp32 on CPU): goal >= 0.6. The example PNGs (128 px) resized up."""
    import numpy as np

    from convirt_cli.torchfree.serve.encoder import OnnxEncoder

    export, manifest = serving_export(tmp, small)
    enc = OnnxEncoder(export, a.device)
    paths = sorted(str(p) for p in (EXAMPLES / "images").glob("*.png"))
    paths = (paths * (a.embed_images // len(paths) + 1))[: a.embed_images]
    size, batch = int(enc.pre["image_size"]), 64
    x = np.random.default_rng(0).normal(size=(batch, int(enc.pre["channels"]), size, size)).astype(np.float32)
    model_only = rate(lambda: enc.image_forward(x), batch)
    end_to_end = rate(lambda: enc.encode_images(paths, batch_size=batch), len(paths), rounds=2)
    return {"device_used": enc.device_used, "fp16": not small, "images": len(paths), "image_size": size,
            "images_per_s_model_only": round(model_only, 1), "images_per_s_end_to_end": round(end_to_end, 1),
            "end_to_end_over_model_only": round(end_to_end / model_only, 3),
            "decode_workers": enc.workers or "one per core", "parity": manifest["parity"].get("image")}


def part_text(a, tmp: Path, small: bool) -> dict:
    """The text tower on onnxruntime (CUDA provider on a GPU): reports/s over the example texts, fp16 export."""
    from convirt_cli.torchfree.serve.encoder import OnnxEncoder

    export, _ = serving_export(tmp, small)
    enc = OnnxEncoder(export, a.device)
    with open(EXAMPLES / "pairs.csv", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    texts = (texts * (a.embed_images // len(texts) + 1))[: a.embed_images]
    per_s = rate(lambda: enc.encode_texts(texts), len(texts), rounds=2)
    import onnxruntime as ort

    return {"device_used": enc.device_used, "texts": len(texts), "texts_per_s": round(per_s, 1),
            "providers": ort.get_available_providers()}


def guarded(name: str, fn, out: dict) -> None:
    """One part of --part all: its JSON line, or its error, and on to the next."""
    t = time.perf_counter()
    try:
        out[name] = fn() | {"part_s": round(time.perf_counter() - t, 1)}
    except Exception as e:  # noqa: BLE001 - a failed part is reported, the others still run
        out[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    print(json.dumps({"part": name} | out[name]), flush=True)


def run_all(a, b: Bench, tmp: Path, small: bool) -> dict:
    """Every figure issue 28 asks for, in order of what matters most (compile last: it may take minutes)."""
    preset, batch, out = convirt_preset(tmp, small), a.batch, {}
    guarded("embed", lambda: part_embed(a, tmp, small), out)
    guarded("pretrain", lambda: part_pretrain(b, preset, batch), out)
    guarded("accum", lambda: part_accum(b, preset, batch), out)
    guarded("dino", lambda: part_dino(b, a.dino_batch), out)
    guarded("text_onnx", lambda: part_text(a, tmp, small), out)
    if small and a.smoke:  # compiling even `tiny` takes minutes on 2 CPU cores
        out["compile"] = {"skipped": "--smoke on CPU"}
    else:
        guarded("compile", lambda: part_compile_pair(b, preset, batch), out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["all", "throughput", "compile", "memory", "dino", "bare"], required=True)
    ap.add_argument("--batch", type=int, default=256, help="--part all: the ConVIRT batch")
    ap.add_argument("--embed-images", type=int, default=4096, help="--part all: images (and texts) embedded")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: a check that every part runs (with --device cpu)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default=None,
                    help="default: 64,128,256 (throughput), 256 (compile, bare), 64,128,256,512 (memory)")
    ap.add_argument("--dino-batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=16, help="steps before timing (on a GPU the loop reports every 16)")
    ap.add_argument("--repeat", type=int, default=10, help="copies of the 600 example pairs")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: pretrain's own sizing)")
    a = ap.parse_args()
    small = a.device == "cpu"
    if a.smoke:
        a.batch, a.embed_images, a.dino_batch, a.steps, a.warmup, a.repeat, a.workers = 16, 128, 4, 3, 1, 1, 0
    default = {"throughput": "64,128,256", "compile": "256", "memory": "64,128,256,512", "dino": "",
               "bare": "256", "all": ""}[a.part]
    batches = [int(x) for x in (a.batches or default).split(",") if x]
    out = {"bench": f"gpu_{a.part}", "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
           "torch": torch.__version__, "precision": "bf16 autocast" if a.device == "cuda" else "fp32"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        b = Bench(a, tmp)
        if a.part == "all":
            out["model"] = "tiny" if small else "ResNet-50 + BERT-base (12 x 768), proj 2048 -> 512; RAD-DINO ViT-B/14"
            out["parts"] = run_all(a, b, tmp, small)
        elif a.part == "bare":
            out["model"] = "tiny" if small else "ResNet-50 + BERT-base (12 x 768), 24 tokens, proj 2048 -> 512"
            out["runs"] = part_bare(a, convirt_preset(tmp, small), batches)
        elif a.part == "dino":
            out["crops"] = "2 x 518 + 8 x 224" if not small else "preset's"
            out["runs"] = part_dino(b, a.dino_batch)
        else:
            preset = convirt_preset(tmp, small)
            out["model"] = "tiny" if small else "ResNet-50 + BERT-base (12 x 768), 128 tokens, proj 2048 -> 512"
            part = {"throughput": part_throughput, "compile": part_compile, "memory": part_memory}[a.part]
            out["runs"] = part(b, preset, batches)
    out |= {"machine": f"{platform.machine()} {os.cpu_count()} cpu", "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
