"""Loop + data overhead of `convirt pretrain`: its samples/s beside a bare forward+backward+step of the
same model and batch size, in one process. Prints one JSON line.

    python benchmarks/pretrain_bench.py [--data examples/data] [--model tiny] [--batch-size 32] [--steps 40]

Goal (issue 2): overhead under 10% on CPU for `tiny` at 128 px.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from timing import make_timer  # benchmarks/ is sys.path[0] when a benchmark runs as a script


def bare(model, batch_size: int, size: int, steps: int, warmup: int, device: str = "cpu",
         channels_last: bool = False) -> float:
    """samples/s of forward + ConVIRT loss + backward + clip + AdamW step on one fixed batch (bf16 autocast on
    CUDA, as pretrain's default)."""
    from convirt_cli.torch.losses import convirt_loss

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    x = torch.randn(batch_size, 3, size, size, device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    tok = model.tokenizer(["small left pleural effusion. heart size is normal."] * batch_size, padding="max_length",
                          max_length=24, return_tensors="pt").to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        with torch.autocast(device, torch.bfloat16, enabled=device == "cuda"):
            v, u = model(x, tok["input_ids"], tok["attention_mask"])
        loss = convirt_loss(v, u, 0.1, 0.75)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    sync()
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "examples" / "data"))
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--num-workers", type=int, default=0)
    args = ap.parse_args()

    from transformers.utils import logging as hf_logging

    from convirt_cli.torch.model import load_model
    from convirt_cli.torch.train.loop import pretrain
    from convirt_cli.torchfree.config import PretrainConfig

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PretrainConfig(data=Path(args.data), model=args.model, batch_size=args.batch_size,
                             max_steps=args.steps + args.warmup, epochs=1000, out=Path(tmp) / "run",
                             runs_dir=Path(tmp) / "runs", device="cpu", plot=False,
                             num_workers=args.num_workers, checkpoint_every=0)
        timer = make_timer()
        run = pretrain(cfg, timer)
        s = timer.stamps
        loop_sps = args.steps * args.batch_size / (s[-1] - s[args.warmup - 1])
        model = load_model(run)
    size = model.cfg.image.image_size
    bare_sps = bare(model, args.batch_size, size, args.steps, args.warmup)
    print(json.dumps({
        "bench": "pretrain", "model": args.model, "image_size": size, "batch_size": args.batch_size,
        "steps": args.steps, "num_workers": args.num_workers, "threads": torch.get_num_threads(),
        "loop_samples_per_s": round(loop_sps, 1), "bare_samples_per_s": round(bare_sps, 1),
        "loop_over_bare": round(loop_sps / bare_sps, 3), "overhead_pct": round(100 * (1 - loop_sps / bare_sps), 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
