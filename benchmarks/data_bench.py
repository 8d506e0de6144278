"""The data path at archive scale on CPU: `convirt shard` itself, and `convirt pretrain` reading WebDataset shards
beside reading a CSV of full-size image files, same model, batch and workers, side by side. ONE JSON line.

    python benchmarks/data_bench.py [--images 320] [--side 2048] [--batch-size 32] [--workers 2]

Full-size stand-in: covid-cxr's real chest X-rays with reports (stored at long side 256), upsampled once to
`--side` px and written as JPEG (quality 92) and as 8-bit PNG, as a PACS export would hold them. Shards: one set
written with `--max-side 512` (decoded and downscaled once, stored as PNG) and one keeping the original JPEG
bytes. Pretrain: `tiny` (128 px), batch 32, the steps of the first epoch after 2 warm-up steps (later epochs of a
CSV this small come from the in-memory decode cache, which an archive does not fit).
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

from timing import make_timer  # benchmarks/ is sys.path[0] when a benchmark runs as a script

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT.parent / "shared" / "data" / "covid-cxr"


def full_size_copies(out: Path, n: int, side: int) -> dict[str, Path]:
    """The first n covid-cxr images with a report, upsampled to `side`, as a JPEG table and a PNG table."""
    from PIL import Image

    with open(COVID / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["report"].strip()][:n]
    tables = {}
    for fmt, ext, kw in (("jpeg", "jpg", {"quality": 92}), ("png", "png", {"compress_level": 6})):
        folder = out / fmt
        (folder / "images").mkdir(parents=True)
        with open(folder / "pairs.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "text", "patient_id"])
            for i, r in enumerate(rows):
                im = Image.open(COVID / r["image"]).convert("L")
                scale = side / max(im.size)
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
                name = f"images/{i:05d}.{ext}"
                im.save(folder / name, **kw)
                w.writerow([name, r["report"], r["patientid"]])
        tables[fmt] = folder
    return tables


def shard(data: Path, out: Path, max_side: int | None) -> float:
    """Seconds for `convirt shard` (a fresh process, as a user runs it)."""
    cmd = [sys.executable, "-m", "convirt_cli", "shard", str(data), "--out", str(out), "--per-shard", "64",
           "--val-fraction", "0"] + (["--max-side", str(max_side)] if max_side else [])
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - t


def pretrain_rate(data: Path, tmp: Path, name: str, a) -> float:
    from convirt_cli.torch.train.loop import pretrain
    from convirt_cli.torchfree.config import PretrainConfig

    warm, n = 2, a.images // a.batch_size  # the first epoch's steps (shards: whole batches per epoch, as a table)
    timer = make_timer()
    pretrain(PretrainConfig(data=data, out=tmp / name, runs_dir=tmp / "runs", device="cpu", plot=False, epochs=1,
                            checkpoint_every=0, val_fraction=0.0, batch_size=a.batch_size, max_steps=n,
                            num_workers=a.workers, model="tiny"), timer)
    s = timer.stamps
    return (len(s) - warm) * a.batch_size / (s[-1] - s[warm - 1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=320)
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        tables = full_size_copies(tmp, a.images, a.side)
        made_s = time.perf_counter() - t
        mb = {k: round(sum(p.stat().st_size for p in (v / "images").iterdir()) / 2**20, 1) for k, v in tables.items()}
        shards = {"jpeg_max_side_512": (tables["jpeg"], 512), "jpeg_original_bytes": (tables["jpeg"], None),
                  "png_max_side_512": (tables["png"], 512)}
        shard_s = {k: shard(src, tmp / "s" / k, side) for k, (src, side) in shards.items()}
        rates = {"csv_jpeg": pretrain_rate(tables["jpeg"], tmp, "cj", a), "csv_png": pretrain_rate(tables["png"], tmp, "cp", a)}
        for k in shards:
            rates[f"shards_{k}"] = pretrain_rate(tmp / "s" / k, tmp, k, a)
    print(json.dumps({
        "bench": "data_path", "images": a.images, "side": a.side, "files_mb": mb, "model": "tiny (128 px)",
        "batch_size": a.batch_size, "workers": a.workers,
        "pretrain_samples_per_s": {k: round(v, 1) for k, v in rates.items()},
        "shards_over_csv": {k: round(v / rates["csv_" + k.split("_")[1]], 2) for k, v in rates.items()
                            if k.startswith("shards_")},
        "shard_images_per_s": {k: round(a.images / v, 1) for k, v in shard_s.items()},
        "stand_in_made_s": round(made_s, 1), "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
