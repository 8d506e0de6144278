"""Four towers on real chest X-rays, ONE JSON line: a DINO tower (`--objective dino`, dino-tiny), a ConVIRT tower
(`tiny`), ConVIRT started from the DINO tower (`--image-init`), and untrained towers of both architectures.

    python benchmarks/towers_bench.py [--out /tmp/convirt-towers] [--seeds 3]

Pretraining: ../shared/data/covid-cxr, the 80% of patients not held out (hash of the patient id), each preset's own
recipe, CPU. Scores:
  covid i2i P@10   held-out patients' images, image->image Precision@10 by finding (`evaluate retrieval`)
  covid sex AUC    `finetune --label sex` on covid-cxr with its patient-level split (RAD-DINO's demographic probe)
  pneumonia AUC    PneumoniaMNIST, official split, linear probe at 1% / 10% / 100% of the labels (test AUC)
All at 64 px (dino-tiny's crop size; the others are resized to it).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def held_out(patient: str) -> bool:
    return int(hashlib.sha256(patient.encode()).hexdigest(), 16) % 5 == 0


def split_covid(out: Path) -> tuple[Path, Path]:
    src = DATA / "covid-cxr" / "manifest.csv"
    with src.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["image"] = str(src.parent / r["image"])
    parts = {"train": [r for r in rows if not held_out(r["patientid"])],
             "held": [r for r in rows if held_out(r["patientid"])]}
    for name, rs in parts.items():
        with (out / f"{name}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rs)
    return out / "train.csv", out / "held.csv"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/convirt-towers"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    from convirt_cli.torch.finetune.sweep import finetune
    from convirt_cli.torch.model import create_model, save_model
    from convirt_cli.torch.train.loop import pretrain
    from convirt_cli.torchfree.config import FinetuneConfig, PretrainConfig
    from convirt_cli.torchfree.evaluate.zeroshot import evaluate_retrieval
    from convirt_cli.torchfree.registry import get_model_config
    from convirt_cli.torchfree.serve.backends import open_encoder

    t0 = time.perf_counter()
    train, held = split_covid(args.out)
    runs = args.out / "runs"
    common = {"data": train, "text_col": "report", "runs_dir": runs, "device": "cpu", "plot": False, "seed": 0}
    towers: dict[str, Path] = {}
    specs = {"dino": {"objective": "dino"}, "convirt": {"model": "tiny"}}
    for name, kw in specs.items():
        run = args.out / name
        if not (run / "summary.json").is_file():
            pretrain(PretrainConfig(out=run, **common, **kw))
        towers[name] = run
    run = args.out / "convirt-from-dino"
    if not (run / "summary.json").is_file():
        pretrain(PretrainConfig(out=run, model="tiny", image_init=towers["dino"], **common))
    towers["convirt-from-dino"] = run
    for name, trained in (("random-vit", "dino"), ("random-resnet", "convirt")):  # the trained runs' own towers
        run = args.out / name
        if not (run / "model.json").is_file():
            torch.manual_seed(0)
            save_model(create_model(get_model_config(towers[trained]), texts=["no finding"] * 4), run)
        towers[name] = run
    learning = {k: json.loads((v / "summary.json").read_text()).get("learning") for k, v in towers.items()
                if (v / "summary.json").is_file()}

    with held.open() as f:
        rows = list(csv.DictReader(f))
    scores: dict[str, dict] = {k: {} for k in towers}
    for name, run in towers.items():
        enc = open_encoder(str(run), "torch", "cpu", runs, None)
        rep = evaluate_retrieval(enc, [r["image"] for r in rows], [r["finding"] for r in rows], per_class=10,
                                 ks=(10,))
        scores[name]["covid_i2i_p10"] = round(rep["image_to_image"]["mean"]["P@10"], 4)
    inits = [str(towers[k]) for k in towers]
    sex = finetune(FinetuneConfig(data=DATA / "covid-cxr" / "manifest.csv", init=inits, labels=["sex"],
                                  image_size=args.size, device="cpu", bootstrap=0, save_models=False, plot=False,
                                  seeds=args.seeds, out=args.out / "sex", seed=0))
    pneu = finetune(FinetuneConfig(data=DATA / "pneumoniamnist" / "manifest.csv", init=inits, labels=["label_name"],
                                   split_col="split", label_fraction=[0.01, 0.1, 1.0], seeds=args.seeds,
                                   image_size=args.size, device="cpu", bootstrap=0, save_models=False, plot=True,
                                   out=args.out / "pneumonia", seed=0))
    names = {str(towers[k].name): k for k in towers}
    for path, key in ((sex, "covid_sex_auc"), (pneu, "pneumonia_auc")):
        table = json.loads((path / "table.json").read_text())
        for row in table["rows"]:
            cells = {f: round(c["mean"], 4) for f, c in row["cells"].items()}
            scores[names.get(row["init"], row["init"])][key] = cells if len(cells) > 1 else next(iter(cells.values()))
    print(json.dumps({"bench": "towers", "held_out_images": len(rows), "size": args.size, "seeds": args.seeds,
                      "scores": scores, "learning": learning, "total_s": round(time.perf_counter() - t0, 1),
                      "machine": f"{platform.machine()} {os.cpu_count()} cpu", "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
