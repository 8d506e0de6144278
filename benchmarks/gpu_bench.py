"""On a GPU: RAD-DINO's ViT-B/14 (`raddino-vitb14`, a transformers Dinov2Model built from its config) trained with
`--objective dino` at the paper's crops (2 x 518 px + 8 x 224 px), images/s per GPU in bf16; and ConVIRT's peak
CUDA memory against the contrastive batch, with and without --grad-checkpointing, and the same sub-batch with
--accum-steps. ONE JSON line.

    python benchmarks/gpu_bench.py [--dino-batch 32] [--convirt-batches 32,64,128,256]

The images are the example data's, upsampled: throughput is the model's, not the decoder's (decoded images are
cached). ConVIRT's towers: ResNet-50 (timm) and a 12-layer, 768-wide BERT built from a config (no download).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from timing import make_timer  # benchmarks/ is sys.path[0] when a benchmark runs as a script

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"


def run(cfg_kw: dict, tmp: Path, name: str) -> tuple[list[float], float]:
    from convirt_cli.torch.train.loop import pretrain
    from convirt_cli.torchfree.config import PretrainConfig

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    timer = make_timer(torch.cuda.synchronize)
    pretrain(PretrainConfig(data=EXAMPLES, out=tmp / name, runs_dir=tmp / "runs", device="cuda", plot=False,
                            epochs=1000, checkpoint_every=0, val_fraction=0.0, **cfg_kw), timer)
    return timer.stamps, torch.cuda.max_memory_allocated() / 2**30


def convirt_preset(tmp: Path) -> str:
    from convirt_cli.torchfree.registry import get_model_config

    cfg = get_model_config("tiny")
    image = cfg.image.model_copy(update={"name": "resnet50", "kwargs": {}, "image_size": 224})
    text = cfg.text.model_copy(update={"hf_config": cfg.text.hf_config | {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
        "vocab_size": 8000, "max_length": 128})
    proj = cfg.projection.model_copy(update={"hidden": 2048, "dim": 512})
    path = tmp / "convirt-r50-bert.json"
    path.write_text(cfg.model_copy(update={"name": "convirt-r50-bert", "image": image, "text": text,
                                           "projection": proj, "train": {}}).model_dump_json())
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dino-batch", type=int, default=32)
    ap.add_argument("--dino-steps", type=int, default=10)
    ap.add_argument("--convirt-batches", default="32,64,128,256")
    a = ap.parse_args()
    out = {"bench": "gpu", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for ckpt in (False, True):
            stamps, peak = run({"objective": "dino", "model": "raddino-vitb14", "batch_size": a.dino_batch,
                                "max_steps": a.dino_steps, "num_workers": 6, "grad_checkpointing": ckpt}, tmp,
                               f"dino{int(ckpt)}")
            warm = 3
            ips = (len(stamps) - warm) * a.dino_batch / (stamps[-1] - stamps[warm - 1])
            out[f"raddino_vitb14{'_grad_ckpt' if ckpt else ''}"] = {
                "batch": a.dino_batch, "crops": "2 x 518 + 8 x 224", "precision": "bf16 autocast",
                "images_per_s": round(ips, 1), "s_per_step": round((stamps[-1] - stamps[warm - 1]) / (len(stamps) - warm), 3),
                "peak_gib": round(peak, 2)}
            print(json.dumps(out), flush=True)
        preset = convirt_preset(tmp)
        mem: dict[str, dict] = {}
        for b in (int(x) for x in a.convirt_batches.split(",")):
            row = {}
            for ckpt in (False, True):
                stamps, peak = run({"model": preset, "batch_size": b, "max_steps": 4, "num_workers": 6, "lr": 1e-4,
                                    "grad_checkpointing": ckpt}, tmp, f"c{b}{int(ckpt)}")
                row["grad_ckpt" if ckpt else "plain"] = {"peak_gib": round(peak, 2),
                                                         "s_per_step": round((stamps[-1] - stamps[1]) / 2, 3)}
            mem[str(b)] = row
            print(json.dumps(out | {"convirt_r50_bert": mem}), flush=True)
        sub = int(a.convirt_batches.split(",")[1])
        for k in (2, 4):
            stamps, peak = run({"model": preset, "batch_size": sub, "accum_steps": k, "max_steps": 4,
                                "num_workers": 6, "lr": 1e-4}, tmp, f"acc{k}")
            mem[f"{sub}x{k} (accum)"] = {"plain": {"peak_gib": round(peak, 2),
                                                   "s_per_step": round((stamps[-1] - stamps[1]) / 2, 3)}}
        out["convirt_r50_bert"] = mem
    out |= {"machine": f"{platform.machine()} {os.cpu_count()} cpu", "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
