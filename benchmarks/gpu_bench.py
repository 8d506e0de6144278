"""On a GPU, `convirt pretrain`'s own loop (data loader, augmentation, loss, AdamW) timed per step. ONE JSON line
per part:

    python benchmarks/gpu_bench.py --part throughput   # R50 + BERT-base, bf16: batch x channels-last, eager
    python benchmarks/gpu_bench.py --part compile      # the same at the largest batch under torch.compile
    python benchmarks/gpu_bench.py --part memory       # peak CUDA memory vs batch, --grad-checkpointing, GradCache
    python benchmarks/gpu_bench.py --part dino         # RAD-DINO ViT-B/14, 2 x 518 + 8 x 224 crops
    python benchmarks/gpu_bench.py --part bare         # the model step alone on synthetic tensors: the ceiling

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
from timing import make_timer  # benchmarks/ is sys.path[0] when a benchmark runs as a script

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
        s = timer.stamps
        contrastive = batch * kw.get("accum_steps", 1)
        row = {"samples_per_s": round(steps * contrastive / (s[-1] - s[warmup - 1]), 1),
               "s_per_step": round((s[-1] - s[warmup - 1]) / steps, 4), "wall_s": round(time.perf_counter() - t0, 1)}
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
    return {f"b{top}_compile{'_channels_last' if cl else ''}": b.run(top, b.a.steps, b.a.warmup + 2, model=preset,
                                                                     lr=1e-4, channels_last=cl, compile=True)
            for cl in (False, True)}


def part_bare(a, preset: str, batches: list[int]) -> dict:
    """The model step alone (pretrain_bench's bare step: synthetic tensors, no loader, augmentation or metrics):
    the loop's ceiling."""
    from pretrain_bench import bare

    from convirt_cli.torch.model import create_model

    with open(EXAMPLES / "pairs.csv", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    out = {}
    for batch in batches:
        for cl in (False, True):
            torch.manual_seed(0)
            model = create_model(preset, texts=texts).to(a.device)
            key = f"b{batch}{'_channels_last' if cl else ''}"
            out[key] = {"samples_per_s": round(bare(model, batch, 224, a.steps, a.warmup, a.device, cl), 1)}
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["throughput", "compile", "memory", "dino", "bare"], required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default=None,
                    help="default: 64,128,256 (throughput), 256 (compile, bare), 64,128,256,512 (memory)")
    ap.add_argument("--dino-batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=10, help="copies of the 600 example pairs")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    a = ap.parse_args()
    small = a.device == "cpu"
    default = {"throughput": "64,128,256", "compile": "256", "memory": "64,128,256,512", "dino": "",
               "bare": "256"}[a.part]
    batches = [int(x) for x in (a.batches or default).split(",") if x]
    out = {"bench": f"gpu_{a.part}", "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
           "torch": torch.__version__, "precision": "bf16 autocast" if a.device == "cuda" else "fp32"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        b = Bench(a, tmp)
        if a.part == "bare":
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
