"""Can a DINO student predict its teacher across views at the start? Cross-view agreement of an untrained preset's
[CLS] tokens under its multi-crop, one augmentation switched off at a time. Prints one JSON line (not a timing).

    python benchmarks/dino_views.py [--model dino-tiny] [--data examples/data] [--images 128]

Each setting changes the grey-level augmentations of the preset's two global views (its crop sizes and scales kept).
Agreement: the cosine between the batch-centred [CLS] tokens of an image's two global views, averaged over images
(`same`), beside the same between different images (`other`). Where `same` is near `other`, the teacher's target on
one view carries nothing the other view can predict: the student's best answer is the batch average, and centring
turns that into the same flat distribution for every image (DINO's uniform collapse).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def agreement(a, b) -> tuple[float, float]:
    import torch.nn.functional as F

    a = F.normalize(a - a.mean(0), dim=-1)
    b = F.normalize(b - b.mean(0), dim=-1)
    s = a @ b.T
    n = len(a)
    same = float(s.diag().mean())
    return same, float((s.sum() - s.diag().sum()) / (n * n - n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dino-tiny")
    ap.add_argument("--data", default=str(ROOT / "examples" / "data"))
    ap.add_argument("--images", type=int, default=128)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from convirt_cli.torch.data.multicrop import multicrop
    from convirt_cli.torch.data.transforms import to_model_input
    from convirt_cli.torch.dino import Student
    from convirt_cli.torch.model import create_model
    from convirt_cli.torch.objectives.dino import crop_params
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.imageio import load_gray
    from convirt_cli.torchfree.registry import DinoConfig, get_model_config

    torch.manual_seed(0)
    cfg = get_model_config(args.model)
    d = cfg.dino
    model = create_model(args.model)
    student = Student(model.image, None, None, use_patches=d.ibot_weight > 0).eval()
    size = max(d.global_size, cfg.image.image_size)
    paths = [row.image for row in read_rows(args.data, text_col=None)][: args.images]
    images = torch.stack([torch.from_numpy(load_gray(p, size, cfg.image.window)) for p in paths])[:, None]
    preset = replace(crop_params(d), n_local=0)
    v2 = DinoConfig()  # DINOv2's grey-level augmentations on the preset's crops
    dinov2 = replace(preset, jitter=tuple(v2.jitter), jitter_p=v2.jitter_p, solarize_p=v2.solarize_p)
    settings = {"DINOv2's (jitter, solarisation, blur)": dinov2,
                "DINOv2's without jitter": replace(dinov2, jitter_p=0.0),
                "DINOv2's without solarisation": replace(dinov2, solarize_p=0.0),
                "DINOv2's without blur": replace(dinov2, blur_sigma=(1e-3, 1e-3)),
                "DINOv2's with milder jitter (0.9-1.1)": replace(dinov2, jitter=(0.9, 1.1)),
                f"the preset ({args.model})": preset,
                "crops and flips only": replace(preset, jitter_p=0.0, solarize_p=0.0, blur_sigma=(1e-3, 1e-3))}
    out = {}
    for name, params in settings.items():
        g = torch.Generator().manual_seed(1)
        views = [to_model_input(v, cfg.image.mean, cfg.image.std, cfg.image.in_chans)
                 for v in multicrop(images, g, params)]
        with torch.no_grad():
            c1, c2 = (student.tokens(v)[0] for v in views)
        same, other = agreement(c1, c2)
        out[name] = {"same": round(same, 3), "other": round(other, 3)}
    print(json.dumps({"bench": "dino_views", "model": args.model, "images": len(paths), "settings": {
        "jitter": list(d.jitter), "jitter_p": d.jitter_p, "solarize_p": d.solarize_p,
        "global_scale": list(d.global_scale)}, "agreement": out, "machine": f"{platform.machine()}",
        "date": date.today().isoformat()}))


if __name__ == "__main__":
    main()
