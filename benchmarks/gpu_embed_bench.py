"""`convirt embed` of images on a GPU: onnxruntime's CUDA provider (fp32 and `export --fp16`) beside torch eager on
the same GPU and onnxruntime on the machine's CPUs, end to end (decode + resize + model; the next batch decodes
while this one runs) and the model alone on a fixed batch, with each side's agreement with torch. ONE JSON line.

    python benchmarks/gpu_embed_bench.py [--images 2048] [--batch 64] [--keep DIR]

The run: a ResNet-50 image tower (timm, random init, 224 px) with the `tiny` text tower, exported as `convirt
export` does (parity gate included). Images: the example data's 128 px PNGs, repeated, so the decoder is cheap and
the end-to-end figure shows what feeding the GPU costs. `--keep DIR` leaves the run and both exports there (for
trying `convirt embed` / `retrieve --device cuda` by hand). Needs onnxruntime-gpu and a CUDA device; each
encoder's `device_used` is printed, so a silent fall-back to CPU shows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import rate  # benchmarks/ is sys.path[0] when a benchmark runs as a script

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of the script")
    ap.add_argument("--keep", type=Path, default=None)
    a = ap.parse_args()
    import onnxruntime as ort
    from transformers.utils import logging as hf_logging

    from convirt_cli.torch.encode import TorchEncoder
    from convirt_cli.torch.export import export_onnx
    from convirt_cli.torch.model import create_model, save_model
    from convirt_cli.torchfree.files import write_json
    from convirt_cli.torchfree.registry import get_model_config
    from convirt_cli.torchfree.serve.encoder import OnnxEncoder

    hf_logging.disable_progress_bar()
    with open(EXAMPLES / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [str(EXAMPLES / r["image"]) for r in rows]
    paths = (paths * (a.images // len(paths) + 1))[: a.images]
    cfg = get_model_config("tiny")
    cfg = cfg.model_copy(update={"name": "r50-tiny-text", "image": cfg.image.model_copy(
        update={"name": "resnet50", "kwargs": {}, "image_size": 224})})
    with tempfile.TemporaryDirectory() as tmp:
        base = a.keep or Path(tmp)
        run = base / "run"
        shutil.rmtree(run, ignore_errors=True)
        torch.manual_seed(0)
        save_model(create_model(cfg, texts=[r["text"] for r in rows]), run)
        write_json(run / "config.json", {"data": str(EXAMPLES), "image_col": "image"})
        t = time.perf_counter()
        fp32, m32 = export_onnx(run, base / "onnx_fp32")
        fp16, m16 = export_onnx(run, base / "onnx_fp16", fp16=True)
        export_s = time.perf_counter() - t
        cpu_threads = os.cpu_count()
        encs = {"torch_" + a.device: TorchEncoder(run, a.device), "onnx_fp32_" + a.device: OnnxEncoder(fp32, a.device),
                "onnx_fp16_" + a.device: OnnxEncoder(fp16, a.device),
                "onnx_fp32_cpu": OnnxEncoder(fp32, "cpu", cpu_threads)}
        pixels = np.random.default_rng(0).normal(size=(a.batch, 3, 224, 224)).astype(np.float32)
        model_only = {k: rate(lambda e=e: e.image_forward(pixels), a.batch) for k, e in encs.items()}
        used = {k: e.device_used for k, e in encs.items()}
        end_to_end = {k: rate(lambda e=e: e.encode_images(paths, batch_size=a.batch), len(paths), rounds=2)
                      for k, e in encs.items()}
        ref = encs["torch_" + a.device].encode_images(paths[:256])[0]
        agree = {k: round(float((ref * e.encode_images(paths[:256])[0]).sum(1).min()), 5)
                 for k, e in encs.items() if not k.startswith("torch")}
    torch_key = "torch_" + a.device
    print(json.dumps({
        "bench": "gpu_embed_images", "model": "ResNet-50 224 px (image tower)", "images": len(paths),
        "batch": a.batch, "device_used": used,
        "images_per_s_end_to_end": {k: round(v, 1) for k, v in end_to_end.items()},
        "images_per_s_model_only": {k: round(v, 1) for k, v in model_only.items()},
        "over_torch_end_to_end": {k: round(v / end_to_end[torch_key], 2) for k, v in end_to_end.items()},
        "over_torch_model_only": {k: round(v / model_only[torch_key], 2) for k, v in model_only.items()},
        "min_cosine_vs_torch_256_images": agree,
        "export_gates": {"fp32": m32["parity"]["image"].get("min_cosine"),
                         "fp16": m16["parity"]["image"].get("min_cosine")},
        "export_s": round(export_s, 1), "cpu_threads": cpu_threads,
        "gpu": torch.cuda.get_device_name() if a.device == "cuda" else None,
        "onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
