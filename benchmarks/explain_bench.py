"""`convirt explain`'s maps per second, ONNX vs torch, and the cost of a map relative to one pooled embedding of
the same image. ONE JSON line.

    python benchmarks/explain_bench.py [--preset tiny] [--images 256] [--phrases 4] [--threads 2]

Images: examples/data (128 px), the first --images of them. The model: the preset at random init (what runs is the
same graph a trained one has), exported fp32. Timed: the network part only (pixels already decoded): image.onnx
(pooled) vs image_dense.onnx (pooled + cells) in batches of 16, and the maps (smooth + upsample per phrase) on top.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--phrases", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from convirt_cli.torch.encode import TorchEncoder
    from convirt_cli.torch.export import export_onnx
    from convirt_cli.torch.model import create_model, save_model
    from convirt_cli.torchfree.explain import maps
    from convirt_cli.torchfree.imageio import load_gray, normalize_array
    from convirt_cli.torchfree.serve.encoder import OnnxEncoder

    torch.set_num_threads(args.threads)
    data = ROOT / "examples" / "data"
    rows = list(csv.DictReader((data / "pairs.csv").open()))[:args.images]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        save_model(create_model(args.preset, texts=[r["text"] for r in rows]), run)
        export_onnx(run, run / "onnx")
        onnx, tch = OnnxEncoder(run / "onnx", "cpu", args.threads), TorchEncoder(run, "cpu", args.threads)
        pre = onnx.pre
        x = normalize_array(np.stack([load_gray(data / r["image"], pre["image_size"]) for r in rows]), pre["mean"],
                            pre["std"], pre["channels"])
        texts = onnx.encode_texts(["left pleural effusion", "enlarged heart", "right pneumothorax", "nodule"]
                                  [:args.phrases] * (args.phrases // 4 + 1))[:args.phrases]
        size = pre["image_size"]

        def batches(fn):
            return [fn(x[i:i + 16]) for i in range(0, len(x), 16)]

        def mapped(enc):
            for _, cells in batches(enc.dense_forward):
                for c in cells:
                    for t in texts:
                        maps.similarity_map(c, t, size)

        out = {"bench": "explain", "preset": args.preset, "images": len(x), "phrases": args.phrases,
               "image_size": size, "threads": args.threads}
        for name, enc in (("onnx", onnx), ("torch", tch)):
            pooled = timed(lambda e=enc: batches(e.image_forward))
            dense = timed(lambda e=enc: batches(e.dense_forward))
            full = timed(lambda e=enc: mapped(e))
            out[name] = {"maps_per_s": round(len(x) * args.phrases / full, 1),
                         "dense_vs_pooled_forward": round(dense / pooled, 3),
                         "map_vs_pooled_embedding": round(full / args.phrases / pooled, 3),
                         "all_phrases_vs_pooled_embedding": round(full / pooled, 3)}
    out |= {"machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
            "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
