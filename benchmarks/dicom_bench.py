"""DICOM decode throughput (images/s) at 2048 x 2048, uncompressed and compressed, beside a 16-bit PNG of the same
pixels and beside torchxrayvision's `read_xray_dcm` on the same files; and cold `convirt retrieve` on a PNG index
with this code beside an older revision (before DICOM support), alternating. ONE JSON line.

    pip install torchxrayvision   # the reference only; not a dependency of convirt
    python benchmarks/dicom_bench.py [--n 8] [--size 224] [--before REV] [--repeats 7]

Ours: `load_gray` (read, modality LUT, window, MONOCHROME1, resize to --size, crop: the model input) and
`dicom.read_gray` (full-resolution 8-bit, no resize: what torchxrayvision's reader returns, as floats). 1 thread and
a pool of os.cpu_count() threads (how embed and finetune decode).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def make_files(tmp: Path, n: int) -> dict[str, list[Path]]:
    from PIL import Image
    from pydicom.uid import JPEG2000Lossless, RLELossless
    from test_dicom import COVID, write_dicom

    paths = sorted((COVID.parent / "images").glob("*.png"))[:n]
    out: dict[str, list[Path]] = {"dicom": [], "dicom-jpeg2000": [], "dicom-rle": [], "png16": []}
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            g = np.asarray(im.convert("L").resize((2048, 2048), Image.Resampling.BILINEAR), dtype=np.uint16) * 16
        for kind, comp in (("dicom", None), ("dicom-jpeg2000", JPEG2000Lossless), ("dicom-rle", RLELossless)):
            out[kind].append(write_dicom(tmp / f"{kind}-{i}.dcm", g, bits=12, window=(2048, 4096), compress=comp))
        Image.fromarray(g).save(tmp / f"png16-{i}.png")
        out["png16"].append(tmp / f"png16-{i}.png")
    return out


def rate(fn, paths: list[Path], threads: int = 1, rounds: int = 2) -> float:
    fn(paths[0])  # imports, plugin discovery
    t = time.perf_counter()
    for _ in range(rounds):
        if threads == 1:
            for p in paths:
                fn(p)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(fn, paths))
    return round(rounds * len(paths) / (time.perf_counter() - t), 2)


def decode(files: dict[str, list[Path]], size: int) -> dict:
    from convirt_cli.torchfree.formats import dicom
    from convirt_cli.torchfree.imageio import load_gray

    cpus = os.cpu_count() or 1
    out = {}
    for kind, paths in files.items():
        row = {"load_gray_1t": rate(lambda p: load_gray(p, size), paths),
               f"load_gray_{cpus}t": rate(lambda p: load_gray(p, size), paths, cpus)}
        if kind.startswith("dicom"):
            row["full_res_1t"] = rate(dicom.read_gray, paths)
            try:
                import torchxrayvision as xrv

                row["torchxrayvision_1t"] = rate(xrv.utils.read_xray_dcm, paths)
            except ImportError:
                row["torchxrayvision_1t"] = None
        out[kind] = row
    return out


def cold_retrieve_before_after(before: str, repeats: int) -> dict:
    from retrieve_bench import FLOOR, cold_retrieve  # noqa: F401 - builds the index with this code

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = tmp / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), before], check=True,
                       capture_output=True)
        try:
            cold_retrieve("convirt-resnet18-minilm", tmp, repeats=1)  # the export and 10k index, under tmp
            cmd = [sys.executable, "-m", "convirt_cli", "retrieve", "--query", "right lower lobe consolidation",
                   "--index", str(tmp / "index"), "-k", "10", "--format", "paths"]

            def wall(root: Path) -> float:
                t = time.perf_counter()
                p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp,
                                   env=os.environ | {"PYTHONPATH": str(root)}, check=False)
                assert p.returncode == 0, p.stderr
                return time.perf_counter() - t

            wall(ROOT), wall(old)
            now, then = [], []
            for i in range(repeats):  # alternate, and swap who goes first, so drift and order hit both alike
                pair = [(now, ROOT), (then, old)]
                for times, root in (pair if i % 2 == 0 else pair[::-1]):
                    times.append(wall(root))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False,
                           capture_output=True)
    return {"before_rev": before, "before_median_s": round(statistics.median(then), 3),
            "after_median_s": round(statistics.median(now), 3),
            "after_over_before": round(statistics.median(now) / statistics.median(then), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--before", default=None, help="git revision before DICOM support, for the cold retrieve")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cold-only", action="store_true", help="only the cold retrieve before/after")
    a = ap.parse_args()
    out = {"bench": "dicom", "pixels": "2048x2048, 12 bits stored", "n": a.n, "size": a.size}
    if not a.cold_only:
        with tempfile.TemporaryDirectory() as tmp:
            files = make_files(Path(tmp), a.n)
            out["file_mb"] = {k: round(sum(p.stat().st_size for p in v) / len(v) / 2**20, 2) for k, v in files.items()}
            out["images_per_s"] = decode(files, a.size)
    if a.before:
        out["cold_retrieve_png_index"] = cold_retrieve_before_after(a.before, a.repeats)
    out |= {"machine": f"{platform.machine()} {os.cpu_count()} cpu", "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
