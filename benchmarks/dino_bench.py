"""`convirt pretrain --objective dino` beside lightly's DINO on the same backbone, crops and batch: samples/s and
peak memory, each side in its own process (peak RSS on CPU, max allocated on CUDA). Prints one JSON line.

    pip install lightly   # the bench's reference only; not a dependency of convirt
    python benchmarks/dino_bench.py [--model dino-tiny] [--batch-size 32] [--steps 30] [--device cpu]

Both sides: the preset's timm ViT as backbone, its DINO head sizes and prototypes, 2 global + N local crops at the
preset's sizes, AdamW, EMA teacher, the example images decoded from disk. lightly has DINO's loss and head but no
iBOT or KoLeo, so convirt runs twice: DINO alone (iBOT and KoLeo weights 0: the like-for-like ratio) and the full
RAD-DINO recipe. lightly's side uses its own DINOTransform (per-image PIL crops in a DataLoader) with colour jitter,
greyscale and solarisation off (grey radiographs); convirt crops and augments batched tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import make_timer  # benchmarks/ is sys.path[0] when a benchmark runs as a script

ROOT = Path(__file__).resolve().parents[1]


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_convirt(args, full: bool) -> dict:
    from convirt_cli.torch.train.loop import pretrain
    from convirt_cli.torchfree.config import PretrainConfig
    from convirt_cli.torchfree.registry import get_model_config

    cfg = get_model_config(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        preset = Path(tmp) / "preset.json"
        d = cfg.dino.model_dump() | ({} if full else {"ibot_weight": 0.0, "koleo_weight": 0.0})
        preset.write_text(cfg.model_copy(update={"dino": cfg.dino.model_copy(update=d)}).model_dump_json())
        timer = make_timer()
        pretrain(PretrainConfig(data=Path(args.data), objective="dino", model=str(preset), batch_size=args.batch_size,
                                max_steps=args.steps + args.warmup, epochs=1000, out=Path(tmp) / "run",
                                runs_dir=Path(tmp) / "runs", device=args.device, plot=False, num_workers=0,
                                checkpoint_every=0), timer)
    s = timer.stamps
    return {"samples_per_s": args.steps * args.batch_size / (s[-1] - s[args.warmup - 1])}


def run_lightly(args) -> dict:
    import timm
    import torch
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms.dino_transform import DINOTransform
    from PIL import Image

    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.registry import get_model_config

    cfg = get_model_config(args.model)
    d, im = cfg.dino, cfg.image
    device = torch.device(args.device)
    def build():
        backbone = timm.create_model(im.name, num_classes=0, **im.kwargs)
        return torch.nn.Sequential(backbone, DINOProjectionHead(backbone.num_features, d.head_hidden,
                                                                d.head_bottleneck, d.prototypes, freeze_last_layer=1))

    student = build().to(device)
    teacher = build().to(device)  # weight-normed heads do not deepcopy
    teacher.load_state_dict(student.state_dict())
    deactivate_requires_grad(teacher)
    criterion = DINOLoss(output_dim=d.prototypes, warmup_teacher_temp=d.warmup_teacher_temp,
                         teacher_temp=d.teacher_temp, warmup_teacher_temp_epochs=1).to(device)
    transform = DINOTransform(global_crop_size=d.global_size, global_crop_scale=tuple(d.global_scale),
                              local_crop_size=d.local_size, local_crop_scale=tuple(d.local_scale),
                              n_local_views=d.n_local, cj_prob=0.0, random_gray_scale=0.0, solarization_prob=0.0,
                              normalize={"mean": im.mean, "std": im.std})
    rows = read_rows(Path(args.data), "image", None)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            with Image.open(rows[i].image) as x:
                return transform(x.convert("RGB"))

    def collate(items):
        return [torch.stack(v) for v in zip(*items)]

    loader = torch.utils.data.DataLoader(Images(), batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate, num_workers=0)
    opt = torch.optim.AdamW(student.parameters(), lr=5e-4, weight_decay=0.04)
    step, t0 = 0, None
    while step < args.steps + args.warmup:
        for views in loader:
            if step == args.warmup:
                t0 = time.perf_counter()
            views = [v.to(device) for v in views]
            with torch.no_grad():
                t_out = [teacher(v) for v in views[:2]]
            s_out = [student(v) for v in views]
            loss = criterion(t_out, s_out, epoch=0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
            opt.step()
            update_momentum(student, teacher, m=0.996)
            step += 1
            if step == args.steps + args.warmup:
                break
    return {"samples_per_s": args.steps * args.batch_size / (time.perf_counter() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT / "examples" / "data"))
    ap.add_argument("--model", default="dino-tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--side", choices=["convirt-dino", "convirt-full", "lightly"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:  # one side, in its own process, so peak memory is its own
        import torch

        out = run_lightly(args) if args.side == "lightly" else run_convirt(args, args.side == "convirt-full")
        print(json.dumps(out | {"peak_mb": round(peak_memory_mb(args.device), 1), "threads": torch.get_num_threads()}))
        return
    sides = {}
    for side in ("convirt-dino", "lightly", "convirt-full"):
        cmd = [sys.executable, __file__, "--side", side, "--model", args.model, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device, "--data", args.data]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        if p.returncode:
            sys.exit(f"{side} failed:\n{p.stderr[-2000:]}")
        sides[side] = json.loads(p.stdout.strip().splitlines()[-1])
    import torch

    ours, ref = sides["convirt-dino"], sides["lightly"]
    print(json.dumps({
        "bench": "dino", "model": args.model, "batch_size": args.batch_size, "steps": args.steps,
        "device": args.device, "sides": sides,
        "dino_speed_ratio": round(ours["samples_per_s"] / ref["samples_per_s"], 3),
        "dino_memory_ratio": round(ours["peak_mb"] / ref["peak_mb"], 3),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
