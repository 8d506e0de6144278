"""The decode side of `convirt embed` / `evaluate` / `classify` (serve/decode.py: file -> normalised model input in
shared memory) beside a bare Pillow decode-and-resize loop in a process pool, over the same real files, at 1, 2, ...
workers; then `convirt embed` end to end against the ideal these cores allow. ONE JSON line.

    python benchmarks/decode_bench.py [--images 1788] [--sizes 96,224] [--kinds png,jpg,dcm] [--rounds 3]
                                      [--embed-images 4023] [--no-embed]

Files: covid-cxr's 447 PNGs at their stored size (8-bit grey, long side 256 px), the same pixels as JPEG
(quality 90) and as 12-bit DICOM (values x 16 + 7, with the file's window), listed over until --images. The bare
loop (`bare`) is what a minimal reader does: Pillow open, JPEG draft, grey, ImageOps.fit bilinear, to numpy (DICOM:
pydicom's pixels through the file's linear window); it returns each array through the pool. Ours (`processes`,
`threads`): serve/decode.py's PixelBatches with that many workers, forced to processes or to threads, batch 64,
no model. Every rate is marginal: the pools are started and warm (ours: from its first batch to its last), and each
figure is the median of --rounds, the contenders taking turns. `gil_held`: the share of one image's time (1 thread)
spent outside Pillow's decode and resize, which release the GIL: threads cannot go past ~1 / gil_held cores.

Embed: the `tiny` preset at random init, exported fp32, `embed_items` over --embed-images PNGs (the 447 listed
over), all cores; marginal images/s from its first batch on, against ideal = 1 / (1 / bare rate + 1 / model-only
rate), the two measured in the same run with all cores (model-only: image_forward on one fixed batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT.parent / "shared" / "data" / "covid-cxr"
BATCH = 64


def make_files(tmp: Path) -> dict[str, list[Path]]:
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from test_dicom import write_dicom

    pngs = sorted((COVID / "images").glob("*.png"))
    out: dict[str, list[Path]] = {"png": pngs, "jpg": [], "dcm": []}
    for p in pngs:
        with Image.open(p) as im:
            g = im.convert("L")
        g.save(tmp / f"{p.stem}.jpg", quality=90)
        out["jpg"].append(tmp / f"{p.stem}.jpg")
        out["dcm"].append(write_dicom(tmp / f"{p.stem}.dcm", np.asarray(g, np.uint16) * 16 + 7, bits=12,
                                      window=(2048.0, 4096.0)))
    return out


def bare(args: tuple[str, int]) -> np.ndarray:
    """A minimal reader: the model-size grey pixels of one file."""
    from PIL import Image, ImageOps

    path, size = args
    if path.endswith(".dcm"):
        import pydicom

        ds = pydicom.dcmread(path)
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        unit = np.clip((ds.pixel_array - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
        g = Image.fromarray(np.rint(unit * 255).astype(np.uint8))
    else:
        with Image.open(path) as im:
            im.draft("L", (size, size))
            g = im.convert("L")
    return np.asarray(ImageOps.fit(g, (size, size), method=Image.Resampling.BILINEAR))


def pool(workers: int) -> ProcessPoolExecutor:
    from convirt_cli.torchfree.processes import process_pool

    return process_pool(workers)


def bare_rate(p: ProcessPoolExecutor, files: list[Path], size: int, workers: int) -> float:
    args = [(str(f), size) for f in files]
    chunk = max(1, min(16, len(args) // (4 * workers)))
    t = time.perf_counter()
    for _ in p.map(bare, args, chunksize=chunk):
        pass
    return len(args) / (time.perf_counter() - t)


def ours_rate(files: list[Path], size: int, workers: int, processes: bool) -> float:
    """Marginal images/s of the decode side alone: from its first batch to its last."""
    from convirt_cli.torchfree.serve.decode import PixelBatches

    pre = {"image_size": size, "mean": [0.5] * 3, "std": [0.25] * 3, "channels": 3, "window": "auto"}
    stamps = []
    with PixelBatches(files, pre, BATCH, workers, processes=processes) as batches:
        for _ in batches:
            stamps.append(time.perf_counter())
    return (len(files) - BATCH) / (stamps[-1] - stamps[0])


def gil_held(files: list[Path], size: int) -> float:
    """1 - (time in Pillow's decode and resize, GIL released) / (time of load_gray), one thread, PNG/JPEG."""
    from PIL import Image, ImageOps

    from convirt_cli.torchfree.imageio import load_gray

    files = files[:200]
    for f in files[:20]:
        load_gray(f, size)
    t = time.perf_counter()
    for f in files:
        load_gray(f, size)
    total = time.perf_counter() - t
    free = 0.0
    for f in files:
        with Image.open(f) as im:
            im.draft("L", (size, size))
            t = time.perf_counter()
            im.load()
            free += time.perf_counter() - t
            g = im.convert("L")
        w, h = g.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        t = time.perf_counter()
        g.resize((size, size), Image.Resampling.BILINEAR, box=box)
        free += time.perf_counter() - t
    del ImageOps
    return 1 - free / total


def decode_side(files: dict[str, list[Path]], sizes: list[int], n: int, rounds: int, cores: int) -> dict:
    out = {}
    for kind, paths in files.items():
        listed = (paths * (n // len(paths) + 1))[:n]
        for size in sizes:
            row: dict = {}
            if kind != "dcm":
                row["gil_held"] = round(gil_held(paths, size), 3)
            for w in range(1, cores + 1):
                rates: dict[str, list[float]] = {"bare": [], "processes": [], "threads": []}
                with pool(w) as p:
                    bare_rate(p, listed[: 8 * w], size, w)  # workers started and warm
                    for _ in range(rounds):
                        rates["bare"].append(bare_rate(p, listed, size, w))
                        rates["processes"].append(ours_rate(listed, size, w, True))
                        rates["threads"].append(ours_rate(listed, size, w, False))
                med = {k: round(statistics.median(v), 1) for k, v in rates.items()}
                row[f"{w}_workers"] = med | {"processes_over_bare": round(med["processes"] / med["bare"], 3),
                                             "threads_over_bare": round(med["threads"] / med["bare"], 3)}
            out[f"{kind}_{size}"] = row
            print(json.dumps({kind: {size: row}}), file=sys.stderr, flush=True)  # progress
    return out


def embed(files: list[Path], n: int, rounds: int, cores: int, tmp: Path) -> dict:
    """`embed_items` of n PNGs end to end (marginal) vs ideal = 1 / (1 / bare pool + 1 / model only)."""
    import torch

    from convirt_cli.torch.export import export_onnx
    from convirt_cli.torch.model import create_model, save_model
    from convirt_cli.torchfree.serve.embed import embed_items
    from convirt_cli.torchfree.serve.encoder import OnnxEncoder

    torch.set_num_threads(cores)
    torch.manual_seed(0)
    run = tmp / "run"
    save_model(create_model("tiny", texts=["no acute disease", "right lower lobe pneumonia"] * 8), run)
    export, _ = export_onnx(run, tmp / "onnx")
    enc = OnnxEncoder(export, "cpu", cores, workers=cores)
    size = int(enc.pre["image_size"])
    listed = [str(p) for p in (files * (n // len(files) + 1))[:n]]
    x = np.random.default_rng(0).normal(size=(BATCH, int(enc.pre["channels"]), size, size)).astype(np.float32)
    enc.image_forward(x)
    items = [{"path": p, "source": p} for p in listed]
    rates: dict[str, list[float]] = {"embed": [], "bare": [], "model_only": []}
    with pool(cores) as p:
        bare_rate(p, files[:64], size, cores)
        for r in range(rounds):
            stamps: list[float] = []
            embed_items(enc, "image", items, tmp / f"index{r}", batch_size=BATCH,
                        on_progress=lambda k, s=stamps: s.append(time.perf_counter()))
            rates["embed"].append((n - BATCH) / (stamps[-1] - stamps[0]))
            rates["bare"].append(bare_rate(p, [Path(q) for q in listed], size, cores))
            t = time.perf_counter()
            for _ in range(max(4, n // BATCH // 4)):
                enc.image_forward(x)
            rates["model_only"].append(max(4, n // BATCH // 4) * BATCH / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ideal = 1 / (1 / med["bare"] + 1 / med["model_only"])
    per_round = [1 / (1 / b + 1 / m) for b, m in zip(rates["bare"], rates["model_only"])]
    return {"model": "tiny (random init), onnx fp32", "image_size": size, "images": n, "workers": cores,
            "threads": cores, "images_per_s": {k: round(v, 1) for k, v in med.items()}, "ideal": round(ideal, 1),
            "embed_over_ideal": round(med["embed"] / ideal, 3),
            "embed_over_ideal_per_round": [round(e / i, 3) for e, i in zip(rates["embed"], per_round)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1788, help="files per pass (the 447 listed over)")
    ap.add_argument("--sizes", default="96,224", help="model input sizes")
    ap.add_argument("--kinds", default="png,jpg,dcm")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--embed-images", type=int, default=4023)
    ap.add_argument("--no-embed", action="store_true")
    ap.add_argument("--no-decode", action="store_true")
    a = ap.parse_args()
    from convirt_cli.torchfree.processes import cpu_workers

    cores = cpu_workers()
    out: dict = {"bench": "decode", "cores": cores, "batch": BATCH}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp))
        files = {k: v for k, v in files.items() if k in a.kinds.split(",")}
        if not a.no_decode:
            out["decode_images_per_s"] = decode_side(files, [int(s) for s in a.sizes.split(",")], a.images,
                                                     a.rounds, cores)
        if not a.no_embed:
            out["embed"] = embed(sorted((COVID / "images").glob("*.png")), a.embed_images, a.rounds, cores,
                                 Path(tmp))
    out |= {"wall_s": round(time.perf_counter() - t0, 1), "load_avg_1min": round(os.getloadavg()[0], 2),
            "machine": f"{platform.machine()} {os.cpu_count()} cpu", "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
