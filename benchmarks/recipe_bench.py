"""Which training recipe should a preset carry? Pretrain it with each candidate recipe on several real data
sets and score held-out data the run never saw, beside the same architecture untrained. ONE JSON line per
(recipe, data set) on stdout (and appended to --out), a summary table on stderr.

    python benchmarks/recipe_bench.py [--preset tiny] [--recipes paper,readme,span] [--data examples,covid,vqa]

Data sets and held-out scores:
  examples  examples/data: train split pretrains; val+test rows (178) score text->image and image->image P@5 by
            finding (6 classes) and text->image R@10 of each row's own image
  covid     ../shared/data/covid-cxr, 360 notes, patient split (20% of patients held out): held-out image->image
            P@10 by finding (COVID-19 / other) and by view, text->image R@10; linear probe COVID-19 vs other
            trained on the pretraining patients, AUC on the held-out ones; and the PneumoniaMNIST probe (the
            covid-pretrained tower, official split, test AUC normal vs pneumonia: unseen chest X-rays)
  vqa       ../shared/data/vqa-rad, 315 images with their question/answer text as captions, 20% of images held
            out: text->image R@10, image->image P@10 by organ (head / chest / abdomen)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

# every recipe sets every value that decides learning, so the preset's own recipe never leaks in
BASE = {"batch_size": 32, "weight_decay": 1e-6, "schedule": "cosine", "grad_clip": 1.0}
RECIPES = {
    "paper": {"lr": 1e-4, "text_view": "sentence", "epochs": 10, "min_steps": 0, "image_size": 128},
    "readme": {"lr": 1e-3, "text_view": "report", "epochs": 30, "min_steps": 0, "image_size": 96},
    "report": {"lr": 1e-3, "text_view": "report", "epochs": 30, "min_steps": 500, "image_size": 128},
    "span": {"lr": 1e-3, "text_view": "span", "epochs": 30, "min_steps": 500, "image_size": 128},
    "sentence": {"lr": 1e-3, "text_view": "sentence", "epochs": 30, "min_steps": 500, "image_size": 128},
    "span-lr3e-4": {"lr": 3e-4, "text_view": "span", "epochs": 30, "min_steps": 500, "image_size": 128},
    "span-lr3e-3": {"lr": 3e-3, "text_view": "span", "epochs": 30, "min_steps": 500, "image_size": 128},
    "span-96": {"lr": 1e-3, "text_view": "span", "epochs": 30, "min_steps": 500, "image_size": 96},
    "span-lr2e-3": {"lr": 2e-3, "text_view": "span", "epochs": 30, "min_steps": 500, "image_size": 128},
    "smoke": {"lr": 1e-3, "text_view": "span", "epochs": 1, "min_steps": 0, "image_size": 64},
    "span-long": {"lr": 1e-3, "text_view": "span", "epochs": 60, "min_steps": 1000, "image_size": 128},
}


def _unit(key: str) -> float:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def datasets(tmp: Path) -> dict[str, dict]:
    """name -> {train: table to pretrain on, held: held-out rows, text_col, labels: {name: column}}."""
    out = {}
    ex = ROOT / "examples" / "data"
    rows = list(csv.DictReader((ex / "pairs.csv").open()))
    for r in rows:
        r["image"] = str(ex / r["image"])
    out["examples"] = {"train": _write_csv(tmp / "ex_train.csv", rows), "split_col": "split", "text_col": "text",
                       "held": [r for r in rows if r["split"] != "train"], "labels": {"finding": "finding"}, "k": 5}
    cov = SHARED / "covid-cxr"
    rows = list(csv.DictReader((cov / "manifest.csv").open()))
    for r in rows:
        r["image"] = str(cov / r["image"])
        r["covid"] = "" if r["finding"] == "todo" else ("covid" if r["finding"].startswith("COVID-19") else "other")
    held = [r for r in rows if _unit("p:" + r["patientid"]) < 0.2]
    train = [r for r in rows if _unit("p:" + r["patientid"]) >= 0.2]
    out["covid"] = {"train": _write_csv(tmp / "covid_train.csv", train), "text_col": "report", "held": held,
                    "probe_train": train, "labels": {"finding": "covid", "view": "view"}, "k": 10}
    vqa = SHARED / "vqa-rad"
    rows = list(csv.DictReader((vqa / "manifest.csv").open()))
    for r in rows:
        r["image"] = str(vqa / r["image"])
    held = [r for r in rows if _unit("i:" + r["image"]) < 0.2]
    train = [r for r in rows if _unit("i:" + r["image"]) >= 0.2]
    out["vqa"] = {"train": _write_csv(tmp / "vqa_train.csv", train), "text_col": "text", "held": held,
                  "labels": {"organ": "image_organ"}, "k": 10}
    return out


def precision_by_label(emb: np.ndarray, labels: list[str], k: int) -> float:
    """Leave-one-out image->image P@k among held-out images, mean over classes with >= 2 members."""
    y = np.asarray(labels)
    keep = y != ""
    emb, y = emb[keep], y[keep]
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    top = np.argsort(-sim, axis=1)[:, :k]
    p = (y[top] == y[:, None]).mean(1)
    classes = [c for c in np.unique(y) if (y == c).sum() >= 2]
    return float(np.mean([p[y == c].mean() for c in classes]))


def score(run: Path, ds: dict) -> dict:
    from convirt_cli.torch.encode import TorchEncoder
    from convirt_cli.torchfree.evaluate.ranking import pair_recall_at_k

    enc = TorchEncoder(run, device="cpu")
    held = [r for r in ds["held"] if r[ds["text_col"]].strip()]
    img, ok, _ = enc.encode_images([r["image"] for r in held])
    held = [held[i] for i in ok]
    txt = enc.encode_texts([r[ds["text_col"]] for r in held])
    groups = np.unique([r[ds["text_col"]] for r in held], return_inverse=True)[1]
    k = ds["k"]
    r10, chance = pair_recall_at_k(txt @ img.T, groups, 10)
    out = {"held_out": len(held), "t2i_r10": round(r10, 4), "t2i_r10_chance": round(chance, 4)}
    for name, col in ds["labels"].items():
        out[f"i2i_p{k}_{name}"] = round(precision_by_label(img, [r[col] for r in held], k), 4)
    if "finding" in ds["labels"] and ds is not None and ds.get("split_col"):  # examples: text->image P@k by finding
        y = np.asarray([r["finding"] for r in held])
        top = np.argsort(-(txt @ img.T), axis=1)[:, :k]
        p = (y[top] == y[:, None]).mean(1)
        out[f"t2i_p{k}_finding"] = round(float(np.mean([p[y == c].mean() for c in np.unique(y)])), 4)
    return out


def covid_probe(run: Path, ds: dict, size: int) -> float:
    """Linear probe COVID-19 vs other: trained on the pretraining patients' labels, AUC on held-out patients."""
    import torch

    from convirt_cli.torch.probe import extract_features, fit_linear_probe
    from convirt_cli.torch.towers import ImageTower
    from convirt_cli.torchfree.evaluate.metrics import roc_auc
    from convirt_cli.torchfree.imageio import load_gray
    from convirt_cli.torchfree.registry import get_model_config

    tower = ImageTower(get_model_config(run).image, local_dir=run / "image")

    def feats(rows):
        rows = [r for r in rows if r["covid"]]
        x = np.stack([load_gray(r["image"], size) for r in rows])[:, None]
        return extract_features(tower, x, torch.device("cpu")), np.array([r["covid"] == "covid" for r in rows], float)

    xt, yt = feats(ds["probe_train"])
    xh, yh = feats(ds["held"])
    cut = int(0.85 * len(xt))  # the probe's own validation rows pick its L2
    res = fit_linear_probe("multiclass", 2, xt[:cut], yt[:cut], xt[cut:], yt[cut:], ["other", "covid"])
    logits = xh @ res.weight.numpy().T + res.bias.numpy()
    return round(roc_auc(yh.astype(bool), logits[:, 1] - logits[:, 0]), 4)


def pneumonia_probe(run: Path, size: int, cache: dict) -> float:
    import torch

    from convirt_cli.torch.probe import extract_features, fit_linear_probe
    from convirt_cli.torch.towers import ImageTower
    from convirt_cli.torchfree.evaluate.metrics import roc_auc
    from convirt_cli.torchfree.registry import get_model_config

    if "pneu" not in cache:
        from PIL import Image

        d = SHARED / "pneumoniamnist"
        rows = list(csv.DictReader((d / "manifest.csv").open()))
        label = next(c for c in ("label", "y", "target") if c in rows[0])
        split = next(c for c in ("split", "set") if c in rows[0])
        imgs = {s: [] for s in ("train", "val", "test")}
        for r in rows:
            im = Image.open(d / r["image"]).convert("L").resize((size, size), Image.Resampling.BILINEAR)
            imgs[r[split]].append((np.asarray(im), float(r[label])))
        cache["pneu"] = {s: (np.stack([a for a, _ in v])[:, None], np.array([b for _, b in v])) for s, v in imgs.items()}
    tower = ImageTower(get_model_config(run).image, local_dir=run / "image")
    data = cache["pneu"]
    f = {s: extract_features(tower, x, torch.device("cpu")) for s, (x, _) in data.items()}
    res = fit_linear_probe("multiclass", 2, f["train"], data["train"][1], f["val"], data["val"][1], ["0", "1"])
    logits = f["test"] @ res.weight.numpy().T + res.bias.numpy()
    return round(roc_auc(data["test"][1].astype(bool), logits[:, 1] - logits[:, 0]), 4)


def untrained(preset: str, ds: dict, size: int, tmp: Path) -> Path:
    import torch

    from convirt_cli.torch.model import create_model, save_model
    from convirt_cli.torchfree.registry import get_model_config, with_overrides

    with Path(ds["train"]).open() as f:
        rows = list(csv.DictReader(f))
    torch.manual_seed(0)
    model = create_model(with_overrides(get_model_config(preset), **{"image.image_size": size}),
                         texts=[r[ds["text_col"]] for r in rows if r[ds["text_col"]].strip()])
    save_model(model, tmp)
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--recipes", default="paper,readme,span")
    ap.add_argument("--data", default="examples,covid,vqa")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", default=None, help="also append the JSON lines here")
    a = ap.parse_args()
    from transformers.utils import logging as hf_logging

    from convirt_cli.torch.train.loop import pretrain
    from convirt_cli.torchfree.config import PretrainConfig

    hf_logging.disable_progress_bar()
    machine = f"{platform.machine()} {os.cpu_count()} cpu"
    cache: dict = {}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        dss = datasets(tmp)
        for name in a.data.split(","):
            ds = dss[name]
            for recipe in ["untrained", *a.recipes.split(",")]:
                for seed in map(int, a.seeds.split(",")):
                    if recipe == "untrained" and seed:
                        continue
                    t0 = time.perf_counter()
                    size = 128 if recipe == "untrained" else RECIPES[recipe]["image_size"]
                    rec = {"bench": "recipe", "preset": a.preset, "data": name, "recipe": recipe, "seed": seed}
                    if recipe == "untrained":
                        run = untrained(a.preset, ds, size, tmp / f"untrained-{name}")
                    else:
                        r = RECIPES[recipe]
                        cfg = PretrainConfig(data=ds["train"], text_col=ds["text_col"], split_col=ds.get("split_col"),
                                             model=a.preset, out=tmp / f"{name}-{recipe}-{seed}", runs_dir=tmp / "runs",
                                             device="cpu", plot=False, seed=seed, **BASE, **r)
                        run = pretrain(cfg)
                        s = json.loads((run / "summary.json").read_text())
                        losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                                  if "loss" in json.loads(x)]
                        half = losses[max(0, len(losses) // 2 - 20):len(losses) // 2]
                        rec |= {"steps": s["steps"], "final_val_loss": s.get("final_val_loss"),
                                "loss_at_half": round(sum(half) / len(half), 4),
                                "collapsed": s["learning"]["collapsed"], "warned": bool(s["learning"]["warned"]),
                                "ln_batch": s["learning"]["ln_batch"], "final_loss": s["learning"]["final_loss"]}
                    rec |= score(run, ds)
                    if name == "covid":
                        rec["covid_probe_auc"] = covid_probe(run, ds, size)
                        rec["pneumonia_probe_auc"] = pneumonia_probe(run, size, cache.setdefault(size, {}))
                    rec |= {"seconds": round(time.perf_counter() - t0, 1), "machine": machine,
                            "date": time.strftime("%Y-%m-%d")}
                    line = json.dumps(rec)
                    print(line, flush=True)
                    if a.out:
                        with open(a.out, "a") as f:
                            f.write(line + "\n")


if __name__ == "__main__":
    main()
