"""Peak memory of a ConVIRT training step against the contrastive batch, with and without --grad-checkpointing,
and the largest contrastive batch that fits a memory budget with and without --accum-steps. ONE JSON line.

    python benchmarks/memory_bench.py [--model tiny] [--image-size 224] [--batches 16,32,64,128] [--budget-mb 3000]

Each configuration runs 2 optimisation steps of `convirt pretrain` on the example data in its own process and
reports that process's peak RSS (CPU) or CUDA max allocated (--device cuda). The budget search doubles the batch
until a configuration would exceed the budget: without --accum-steps the batch is what one forward holds; with
--accum-steps K the same sub-batch carries K times the negatives.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, torch
from pathlib import Path
from convirt_cli.torch.train.loop import pretrain
from convirt_cli.torchfree.config import PretrainConfig
kw = json.loads(sys.argv[1])
pretrain(PretrainConfig(**kw))
peak = torch.cuda.max_memory_allocated() / 2**20 if kw["device"] == "cuda" else \\
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mb": round(peak, 1)}))
"""


def peak(args, batch: int, accum: int, ckpt: bool, tmp: Path) -> float:
    kw = {"data": str(ROOT / "examples" / "data"), "model": args.model, "batch_size": batch, "accum_steps": accum,
          "grad_checkpointing": ckpt, "max_steps": 2, "epochs": 100, "image_size": args.image_size,
          "out": str(tmp / f"b{batch}-a{accum}-c{int(ckpt)}"), "runs_dir": str(tmp / "runs"), "device": args.device,
          "plot": False, "val_fraction": 0.0}
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(kw)], capture_output=True, text=True, check=False,
                       env=os.environ | {"HF_HUB_OFFLINE": "1"})
    if p.returncode:
        raise SystemExit(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batches", default="16,32,64,128")
    ap.add_argument("--budget-mb", type=float, default=3000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    out = {"bench": "memory", "model": args.model, "image_size": args.image_size, "device": args.device,
           "budget_mb": args.budget_mb, "peak_mb": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for b in (int(x) for x in args.batches.split(",")):
            out["peak_mb"][b] = {"plain": peak(args, b, 1, False, tmp), "grad_checkpointing": peak(args, b, 1, True, tmp)}
        fits = [b for b, v in out["peak_mb"].items() if v["plain"] <= args.budget_mb]
        sub = max(fits) if fits else None
        out["largest_batch_in_budget"] = {"plain": sub}
        if sub:
            for k in (2, 4):  # the same sub-batch memory, K times the negatives
                out["peak_mb"][f"{sub}x{k} (accum)"] = {"plain": peak(args, sub, k, False, tmp)}
            ok = [k for k in (2, 4) if out["peak_mb"][f"{sub}x{k} (accum)"]["plain"] <= args.budget_mb]
            out["largest_batch_in_budget"]["accum_steps"] = sub * max(ok) if ok else sub
    import torch

    out |= {"machine": f"{platform.machine()} {os.cpu_count()} cpu", "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
