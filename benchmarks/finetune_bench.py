"""Mini data-efficiency study (ConVIRT Table 1 in miniature) on PneumoniaMNIST, one JSON line out.

Question: does a tower pretrained with ConVIRT on real chest X-ray/report pairs (covid-cxr, 447
images) give a better probe than the same architecture at random init, and at which label fraction?

Steps: pretrain `tiny` on ../shared/data/covid-cxr (reports as text, fixed steps, CPU), then
`convirt finetune` over inits {pretrained, random} x label fractions x seeds on PneumoniaMNIST's
official split (28 px upscaled to --size). Writes the table, results and plot under --out and copies
the plot to benchmarks/finetune_data_efficiency.png.

    .venv/bin/python benchmarks/finetune_bench.py                       # linear probe, ~1 min on 2 cores
    .venv/bin/python benchmarks/finetune_bench.py --mode full --fractions 0.01,0.1 --seeds 2
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="linear", choices=["linear", "full"])
    ap.add_argument("--fractions", default="0.01,0.1,1.0")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)  # towers from scratch: 10x the paper's 1e-4
    ap.add_argument("--text-view", default="report", choices=["sentence", "report"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/convirt-finetune-bench"))
    ap.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "finetune_data_efficiency.png")
    args = ap.parse_args()

    import torch

    from convirt_cli.torch.finetune.sweep import finetune
    from convirt_cli.torch.train.loop import pretrain
    from convirt_cli.torchfree.config import FinetuneConfig, PretrainConfig

    t0 = time.perf_counter()
    run = args.out / "pretrain"
    if not (run / "summary.json").is_file():
        pretrain(PretrainConfig(data=DATA / "covid-cxr" / "manifest.csv", text_col="report", model="tiny",
                                image_size=args.size, max_steps=args.pretrain_steps, epochs=1000, batch_size=32,
                                lr=args.pretrain_lr, text_view=args.text_view, out=run, runs_dir=args.out / "runs",
                                device="cpu", plot=False, seed=0))
    pre = json.loads((run / "summary.json").read_text())
    t_pre = time.perf_counter() - t0
    out = finetune(FinetuneConfig(
        data=DATA / "pneumoniamnist" / "manifest.csv", init=[str(run), "random"], model="tiny",
        labels=["label_name"], split_col="split", mode=args.mode, label_fraction=args.fractions,
        seeds=args.seeds, image_size=args.size, epochs=args.epochs, lr=args.lr, device="cpu",
        bootstrap=1000, out=args.out / f"finetune-{args.mode}", save_models=False, seed=0))
    table = json.loads((out / "table.json").read_text())
    if args.plot:
        shutil.copyfile(out / "data_efficiency.png", args.plot)
    print(json.dumps({
        "bench": "finetune_data_efficiency", "data": "pneumoniamnist (official split)", "mode": args.mode,
        "model": "tiny", "image_size": args.size, "pretrain": f"covid-cxr, {args.pretrain_steps} steps, lr {args.pretrain_lr}, text view {args.text_view}",
        "pretrain_final_val_loss": pre.get("final_val_loss"),
        "metric": f"{table['split']} {table['metric']}", "seeds": args.seeds,
        "table": {r["init"]: {f: [round(c["mean"], 4), round(c["sd"], 4)] for f, c in r["cells"].items()}
                  for r in table["rows"]},
        "pretrain_s": round(t_pre, 1), "total_s": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}, CPU",
        "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
