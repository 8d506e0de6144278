#!/usr/bin/env python
"""Generate a small synthetic paired chest-X-ray / report data set.

Every image is a stylised frontal chest radiograph drawn with numpy; every
report is built from templates.  The findings chosen for an image decide both
what is drawn and what the report says, so a contrastive image-text model
(ConVIRT) can learn the pairing.  Each image also gets a mask (masks/NNNN.png)
of the region its primary finding draws, a target for segmentation probes.

Orientation follows the radiological convention: the patient's RIGHT side is
on the LEFT of the image.  (So horizontal-flip augmentation breaks the link
between image and the "left"/"right" words of the report.)

Usage::

    python examples/make_example_data.py            # writes examples/data/
    python examples/make_example_data.py --seed 1 --out /tmp/cxr --n-images 200

Only numpy and Pillow are needed.  The output is deterministic for a given
seed (byte-identical CSV and PNGs).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image

FINDINGS = ["cardiomegaly", "pleural effusion", "pneumothorax", "nodule", "consolidation"]
NO_FINDING = "no finding"
PRIMARY_CLASSES = FINDINGS + [NO_FINDING]
SPLITS = ("train", "val", "test")
QUANT = 4  # grey-level step of the saved PNGs

# --------------------------------------------------------------------------
# image rendering
# --------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def _ellipse(x, y, cx, cy, ax, ay, soft=0.06):
    """Soft elliptical mask in [0, 1]; ``soft`` is the edge width in radius units."""
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return _sigmoid((1.0 - r) / soft)


def _segment_dist(x, y, x0, y0, x1, y1):
    """Distance from every pixel to the segment (x0, y0)-(x1, y1), and position t along it."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy)), t


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise (roughly zero mean, unit-ish amplitude) on a size x size grid."""
    g = rng.standard_normal((cells + 1, cells + 1))
    u = np.linspace(0.0, cells, size, endpoint=False)
    i = np.floor(u).astype(int)
    f = u - i
    f = f * f * (3.0 - 2.0 * f)  # smoothstep
    rows = g[i] * (1.0 - f)[:, None] + g[i + 1] * f[:, None]  # (size, cells+1)
    return rows[:, i] * (1.0 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _lung_geometry(anat: dict, jit: dict, size: int) -> dict:
    s = size / 128.0
    cx = size / 2 + jit["dx"] * s
    cy = 62 * s + jit["dy"] * s
    sep = anat["lung_sep"] * s
    return {
        # patient's right lung = image left
        "right": {"cx": cx - sep, "cy": cy, "ax": anat["lung_ax"] * s, "ay": anat["lung_ay"] * s, "lateral": -1},
        "left": {"cx": cx + sep + 1 * s, "cy": cy + 2 * s, "ax": anat["lung_ax"] * 0.94 * s,
                     "ay": anat["lung_ay"] * 0.95 * s, "lateral": +1},
        "cx": cx,
        "cy": cy,
        "s": s,
    }


def render_image(anat: dict, findings: dict, rng: np.random.Generator, size: int = 128,
                 grain: float = 0.0, regions: dict | None = None) -> np.ndarray:
    """Render one radiograph as a uint8 array (size x size); `regions`, when given, receives each finding's drawn
    region as a bool mask (the same random draws either way, so images do not depend on it)."""
    regions = {} if regions is None else regions
    jit = {"dx": rng.uniform(-2.5, 2.5), "dy": rng.uniform(-2.5, 2.5), "rot": rng.uniform(-3.0, 3.0)}
    geo = _lung_geometry(anat, jit, size)
    s, cx, cy = geo["s"], geo["cx"], geo["cy"]

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # small rotation of the patient about the image centre
    a = math.radians(jit["rot"])
    c0 = size / 2
    x = c0 + (xx - c0) * math.cos(a) + (yy - c0) * math.sin(a)
    y = c0 - (xx - c0) * math.sin(a) + (yy - c0) * math.cos(a)

    # --- body / soft tissue -------------------------------------------------
    body = _ellipse(x, y, cx, cy + 20 * s, anat["body_ax"] * s, 74 * s, soft=0.04)
    shoulders = _ellipse(x, y, cx, cy - 36 * s, anat["body_ax"] * 1.05 * s, 16 * s, soft=0.08)
    neck = _ellipse(x, y, cx, cy - 58 * s, 13 * s, 20 * s, soft=0.1)
    body = np.maximum(body, np.maximum(shoulders * 0.9, neck))
    D = 0.05 + body * anat["tissue"]
    # spine / mediastinum column
    D += body * 0.10 * _sigmoid((9 * s - np.abs(x - cx)) / (1.5 * s)) * _sigmoid((y - 6 * s) / (3 * s))

    # --- lungs ----------------------------------------------------------------
    lungs = {}
    for side in ("right", "left"):
        g = geo[side]
        lungs[side] = _ellipse(x, y, g["cx"], g["cy"], g["ax"], g["ay"], soft=0.05)
    lung_any = np.maximum(lungs["right"], lungs["left"])
    D -= lung_any * anat["air"]

    # ribcage outline: a bright ring just outside the lungs
    rib_r = np.sqrt(((x - cx) / (anat["lung_sep"] * s + anat["lung_ax"] * s + 4 * s)) ** 2
                    + ((y - cy - 2 * s) / (anat["lung_ay"] * s + 5 * s)) ** 2)
    D += 0.10 * np.exp(-(((rib_r - 1.0) / 0.035) ** 2)) * (y < cy + 30 * s) * _sigmoid(
        (np.abs(x - cx) - 20 * s) / (5 * s))

    # posterior ribs: curved bright bands across the lungs
    ribs = np.zeros_like(D)
    for k in range(9):
        y0 = cy - anat["lung_ay"] * s + (4 + 8.2 * k) * s
        curve = y0 - 10 * s + 0.012 / s * (np.abs(x - cx) - 6 * s) ** 2 * 0.55
        ribs += np.exp(-(((y - curve) / (1.6 * s)) ** 2))
    ribs *= lung_any * 0.055

    # vascular markings: branching lines from each hilum, fading laterally
    marks = np.zeros_like(D)
    for side in ("right", "left"):
        g = geo[side]
        hx, hy = g["cx"] - g["lateral"] * g["ax"] * 0.55, g["cy"] + 2 * s
        for ang in np.linspace(-70, 80, 7) + rng.uniform(-8, 8, 7):
            th = math.radians(ang)
            ln = g["ax"] * rng.uniform(1.0, 1.5)
            x1 = hx + g["lateral"] * ln * math.cos(th)
            y1 = hy + ln * math.sin(th) * 1.6
            d, t = _segment_dist(x, y, hx, hy, x1, y1)
            marks += np.exp(-((d / (0.9 * s)) ** 2)) * (1.0 - 0.7 * t)
    marks = np.clip(marks, 0, 1.4) * lung_any * 0.07

    # --- heart ------------------------------------------------------------------
    cm = "cardiomegaly" in findings
    h_ax = (anat["heart_ax"] * (1.5 if cm else 1.0)) * s
    h_ay = (anat["heart_ay"] * (1.22 if cm else 1.0)) * s
    h_cx = cx + (7 if cm else 5) * s
    h_cy = cy + (23 if cm else 21) * s
    heart = _ellipse(x, y, h_cx, h_cy, h_ax, h_ay, soft=0.05) * (y > cy - 6 * s)
    # upper mediastinum (aortic knob / SVC) above the heart
    med = _ellipse(x, y, cx + 1 * s, cy - 10 * s, 9.5 * s, 24 * s, soft=0.08)
    heart = np.maximum(heart, med * 0.9)
    heart_val = 0.05 + anat["tissue"] + 0.1

    # --- pathology --------------------------------------------------------------
    ptx_region = np.zeros_like(D)
    pleural_line = np.zeros_like(D)
    if "pneumothorax" in findings:
        f = findings["pneumothorax"]
        g = geo[f["side"]]
        shrink = {"small": 0.72, "moderate": 0.6, "large": 0.48}[f["size"]]
        icx = g["cx"] - g["lateral"] * g["ax"] * (1 - shrink) * 0.9
        icy = g["cy"] + g["ay"] * (1 - shrink) * 0.35
        inner = _ellipse(x, y, icx, icy, g["ax"] * shrink, g["ay"] * (0.55 + 0.45 * shrink), soft=0.04)
        ptx_region = lungs[f["side"]] * (1.0 - inner)
        r_in = np.sqrt(((x - icx) / (g["ax"] * shrink)) ** 2
                       + ((y - icy) / (g["ay"] * (0.55 + 0.45 * shrink))) ** 2)
        pleural_line = np.exp(-(((r_in - 1.0) / 0.03) ** 2)) * lungs[f["side"]] * 0.22

    D = D + marks * (1.0 - ptx_region) + ribs * (1.0 - 0.5 * ptx_region)
    D -= ptx_region * 0.13
    D += pleural_line

    D = D * (1.0 - heart) + heart * heart_val
    if cm:
        regions["cardiomegaly"] = _ellipse(x, y, h_cx, h_cy, h_ax, h_ay, soft=0.05) * (y > cy - 6 * s) > 0.5
    if "pneumothorax" in findings:
        regions["pneumothorax"] = ptx_region > 0.5

    if "pleural effusion" in findings:
        f = findings["pleural effusion"]
        sides = ["right", "left"] if f["side"] == "bilateral" else [f["side"]]
        frac = {"small": 0.33, "moderate": 0.45}[f["size"]]
        for side in sides:
            g = geo[side]
            level = g["cy"] + g["ay"] * (1.0 - 2.0 * frac)
            # meniscus: fluid climbs higher laterally
            lat = np.clip(g["lateral"] * (x - g["cx"]) / g["ax"], -1, 1)
            level_x = level - 7 * s * np.clip(lat, 0, 1) ** 2 + 2 * s * np.clip(-lat, 0, 1)
            fluid = _sigmoid((y - level_x) / (1.6 * s)) * _ellipse(
                x, y, g["cx"], g["cy"], g["ax"] * 1.04, g["ay"] * 1.04, soft=0.05)
            D = D * (1.0 - fluid) + fluid * (heart_val - 0.02)
            regions["pleural effusion"] = regions.get("pleural effusion", False) | (fluid > 0.5)

    # opacities drawn last stay visible even where they project over heart or fluid
    if "consolidation" in findings:
        f = findings["consolidation"]
        g = geo[f["side"]]
        off_y = {"upper": -0.5, "middle": 0.05, "lower": 0.5}[f["lobe"]] * g["ay"]
        off_x = g["lateral"] * (0.15 if f["lobe"] != "middle" else -0.1) * g["ax"]
        ccx, ccy = g["cx"] + off_x + rng.uniform(-2, 2) * s, g["cy"] + off_y + rng.uniform(-2, 2) * s
        # a cloud of overlapping puffs, mottled by noise
        cloud = np.zeros_like(D)
        for _ in range(7):
            px, py = ccx + rng.normal(0, 4.5) * s, ccy + rng.normal(0, 5.5) * s
            sig = rng.uniform(3.0, 5.5) * s
            cloud += rng.uniform(0.5, 1.0) * np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sig * sig))
        patch = np.clip(0.75 + 0.5 * _smooth_noise(rng, size, 20), 0.2, 1.4)
        cons = np.clip(cloud * patch, 0, 1.1) * lungs[f["side"]]
        D += cons * 0.28
        regions["consolidation"] = cons > 0.35

    if "nodule" in findings:
        f = findings["nodule"]
        g = geo[f["side"]]
        ny = g["cy"] + (-0.45 if f["zone"] == "upper" else 0.3) * g["ay"] + rng.uniform(-3, 3) * s
        nx = g["cx"] + g["lateral"] * rng.uniform(0.15, 0.45) * g["ax"]
        r = f["radius"] * s
        D += 0.32 * _sigmoid((r - np.hypot(x - nx, y - ny)) / (0.6 * s))
        regions["nodule"] = np.hypot(x - nx, y - ny) <= r

    # --- exposure, noise, quantisation -------------------------------------------
    D = D + 0.025 * _smooth_noise(rng, size, 4) + 0.012 * _smooth_noise(rng, size, 16)
    D = D * anat["exposure"] * rng.uniform(0.94, 1.06)
    if grain > 0:  # per-pixel quantum mottle (off by default: it doubles the PNG size)
        D = D + rng.normal(0.0, grain, D.shape)
    D = np.clip(D, 0.0, 1.0) ** anat["gamma"]
    # 64 grey levels keep the PNGs small (~4 KB) without visible banding
    return (np.clip(np.round(D * 255.0 / QUANT), 0, 255 // QUANT) * QUANT).astype(np.uint8)


# --------------------------------------------------------------------------
# report text
# --------------------------------------------------------------------------

TECHNIQUE = [
    "PA and lateral views of the chest were obtained",
    "Frontal view of the chest was obtained",
    "Single portable AP view of the chest",
    "PA view of the chest was reviewed",
    "Frontal and lateral chest radiographs were obtained",
    "Upright frontal radiograph of the chest",
]
COMPARISON = [
    "No prior studies are available for comparison",
    "Comparison is made to the prior radiograph from {n} months ago",
    "Compared with the study from {n} weeks earlier",
    "No comparison studies available",
]


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def finding_sentence(name: str, f: dict, rng: np.random.Generator) -> str:
    pick = lambda opts: opts[int(rng.integers(len(opts)))]
    if name == "cardiomegaly":
        return pick([
            "The heart is enlarged",
            "Cardiomegaly is present",
            "The cardiac silhouette is markedly enlarged",
            "There is moderate enlargement of the cardiac silhouette",
            "Cardiomegaly with a cardiothoracic ratio greater than one half",
            "The heart size is enlarged, consistent with cardiomegaly",
        ])
    if name == "pleural effusion":
        size, side = f["size"], f["side"]
        if side == "bilateral":
            return pick([
                f"There are {size} bilateral pleural effusions",
                f"{_cap(size)} bilateral pleural effusions with blunting of both costophrenic angles",
                f"Bilateral {size} pleural effusions are present",
                "Blunting of both costophrenic angles consistent with bilateral pleural effusions",
                f"Layering fluid at both lung bases, compatible with {size} bilateral effusions",
            ])
        return pick([
            f"There is a {size} {side} pleural effusion",
            f"{_cap(size)} {side} pleural effusion is present",
            f"Blunting of the {side} costophrenic angle consistent with a {size} pleural effusion",
            f"A {size} {side}-sided pleural effusion is noted",
            f"Meniscus-shaped opacity at the {side} lung base compatible with pleural effusion",
            f"Layering fluid in the {side} hemithorax consistent with a {size} effusion",
        ])
    if name == "pneumothorax":
        size, side = f["size"], f["side"]
        return pick([
            f"There is a {size} {side} pneumothorax",
            f"A {size} {side}-sided pneumothorax is present with a visible pleural line",
            f"{_cap(side)} pneumothorax with absent lung markings peripherally",
            f"Visible visceral pleural edge in the {side} hemithorax consistent with a {size} pneumothorax",
            f"{_cap(size)} {side} pneumothorax is identified",
            f"Lucency without lung markings along the lateral {side} chest, compatible with pneumothorax",
        ])
    if name == "nodule":
        where = f"{f['side']} {f['zone']}"
        mm = f["mm"]
        return pick([
            f"A {mm} mm nodule is seen in the {where} lobe",
            f"There is a {mm} mm pulmonary nodule in the {where} lung zone",
            f"Well-circumscribed rounded opacity in the {where} lung, suspicious for a nodule",
            f"A {mm} mm nodular density projects over the {where} lung",
            f"Solitary pulmonary nodule measuring {mm} mm in the {where} lobe",
            f"Small round nodular opacity in the {where} lung field",
        ])
    if name == "consolidation":
        where = f"{f['side']} {f['lobe']}"
        return pick([
            f"Patchy airspace opacity in the {where} lobe consistent with consolidation",
            f"Focal consolidation is present in the {where} lobe",
            f"There is airspace consolidation involving the {where} lobe, which may represent pneumonia",
            f"Ill-defined patchy opacity in the {where} lobe concerning for pneumonia",
            f"{_cap(where)} lobe consolidation is seen",
            f"Hazy airspace disease in the {where} lobe compatible with consolidation",
        ])
    raise ValueError(name)


def impression_phrase(name: str, f: dict, rng: np.random.Generator) -> str:
    pick = lambda opts: opts[int(rng.integers(len(opts)))]
    if name == "cardiomegaly":
        return pick(["cardiomegaly", "enlarged heart", "enlargement of the cardiac silhouette"])
    if name == "pleural effusion":
        if f["side"] == "bilateral":
            return pick(["bilateral pleural effusions", f"{f['size']} bilateral effusions"])
        return pick([f"{f['side']} pleural effusion", f"{f['size']} {f['side']} effusion"])
    if name == "pneumothorax":
        return pick([f"{f['side']} pneumothorax", f"{f['size']} {f['side']} pneumothorax"])
    if name == "nodule":
        return pick([f"{f['side']} {f['zone']} lobe nodule", f"pulmonary nodule in the {f['side']} {f['zone']} lung",
                     f"{f['side']} {f['zone']} lung nodule"])
    if name == "consolidation":
        return pick([f"{f['side']} {f['lobe']} lobe consolidation", f"{f['side']} {f['lobe']} lobe pneumonia",
                     f"airspace consolidation in the {f['side']} {f['lobe']} lobe"])
    raise ValueError(name)


def normal_sentences(present: set) -> list:
    """Normal-statement fillers that are consistent with the findings present."""
    out = [
        ["No acute osseous abnormality", "The visualized osseous structures are intact",
         "Bony thorax is unremarkable"],
        ["The upper abdomen is unremarkable", "Soft tissues are unremarkable"],
        ["There is no pulmonary edema", "Pulmonary vasculature is within normal limits"],
    ]
    if "cardiomegaly" not in present:
        out.append(["The cardiomediastinal silhouette is within normal limits", "Heart size is normal",
                    "Normal cardiac and mediastinal contours"])
    if "pleural effusion" not in present and "pneumothorax" not in present:
        out.append(["No pleural effusion or pneumothorax", "There is no pleural effusion or pneumothorax"])
    elif "pleural effusion" not in present:
        out.append(["No pleural effusion", "The costophrenic angles are sharp"])
    elif "pneumothorax" not in present:
        out.append(["No pneumothorax", "There is no pneumothorax"])
    if "consolidation" not in present:
        out.append(["No focal consolidation", "No focal airspace consolidation"])
    if not present & {"pleural effusion", "pneumothorax", "nodule", "consolidation"}:
        out.append(["The lungs are clear", "Lungs are clear bilaterally", "The lungs are well expanded and clear"])
    return out


def make_report(findings: dict, rng: np.random.Generator) -> str:
    pick = lambda opts: opts[int(rng.integers(len(opts)))]
    present = set(findings)
    n_target = int(rng.integers(4, 8))  # 4..7 sentences
    head = [pick(TECHNIQUE)]
    if rng.random() < 0.35:
        head.append(pick(COMPARISON).format(n=int(rng.integers(2, 13))))
    names = [n for n in FINDINGS if n in findings]
    order = list(rng.permutation(len(names)))
    body = [finding_sentence(names[i], findings[names[i]], rng) for i in order]

    if names:
        phrases = [impression_phrase(names[i], findings[names[i]], rng) for i in order]
        joined = " and ".join(phrases)
        impression = pick([f"Impression: {joined}", f"IMPRESSION: {joined}",
                           f"Findings consistent with {joined}",
                           f"Impression: {joined}, " + ("recommend CT follow-up" if "nodule" in findings
                                                         else "clinical correlation advised")])
    else:
        impression = pick(["Impression: no acute cardiopulmonary process",
                           "IMPRESSION: normal chest radiograph",
                           "No acute cardiopulmonary abnormality",
                           "Impression: no radiographic evidence of acute disease"])

    groups = normal_sentences(present)
    n_fill = max(0, n_target - len(head) - len(body) - 1)
    n_fill = min(n_fill, len(groups))
    fill_idx = sorted(rng.choice(len(groups), size=n_fill, replace=False).tolist())
    fillers = [pick(groups[i]) for i in fill_idx]

    # findings first, then normal statements, shuffled a little
    middle = body + fillers
    if rng.random() < 0.5 and len(middle) > 1:
        middle = [middle[i] for i in rng.permutation(len(middle))]
    sentences = head + middle + [impression]
    return ". ".join(_cap(s) for s in sentences) + "."


# --------------------------------------------------------------------------
# data set assembly
# --------------------------------------------------------------------------


def _side_of(f: dict) -> set:
    return {"right", "left"} if f["side"] == "bilateral" else {f["side"]}


def blocked_sides(name: str, findings: dict) -> set:
    """Sides where finding ``name`` must not go, given the findings already chosen.

    A pneumothorax never shares a lung with an effusion, nodule or consolidation
    (the collapsed, air-filled region would hide or contradict them).
    """
    out = set()
    for other, f in findings.items():
        if other == "cardiomegaly":
            continue
        if name == "pneumothorax" or other == "pneumothorax":
            out |= _side_of(f)
    return out


def sample_finding(name: str, rng: np.random.Generator, blocked: set = frozenset()) -> dict:
    pick = lambda opts: opts[int(rng.integers(len(opts)))]
    free = [s for s in ("right", "left") if s not in blocked]
    if name == "cardiomegaly":
        return {}
    if name == "pleural effusion":
        side = pick(free + ["bilateral"] if len(free) == 2 else free)
        return {"side": side, "size": pick(["small", "moderate"])}
    if name == "pneumothorax":
        return {"side": pick(free), "size": pick(["small", "moderate", "large"])}
    if name == "nodule":
        radius = float(rng.uniform(3.2, 4.6))
        return {"side": pick(free), "zone": pick(["upper", "lower"]), "radius": radius, "mm": round(radius * 2.6)}
    if name == "consolidation":
        side = pick(free)
        return {"side": side, "lobe": pick(["upper", "middle", "lower"] if side == "right" else ["upper", "lower"])}
    raise ValueError(name)


def make_patient(rng: np.random.Generator) -> dict:
    sex = "M" if rng.random() < 0.5 else "F"
    w = 1.0 if sex == "M" else 0.94
    return {
        "sex": sex,
        "age": int(rng.integers(20, 91)),
        "body_ax": float(rng.uniform(52, 58) * w),
        "lung_sep": float(rng.uniform(21, 24) * w),
        "lung_ax": float(rng.uniform(15.5, 18) * w),
        "lung_ay": float(rng.uniform(32, 37)),
        "heart_ax": float(rng.uniform(18.5, 20.5) * w),
        "heart_ay": float(rng.uniform(13, 15)),
        "tissue": float(rng.uniform(0.40, 0.48)),
        "air": float(rng.uniform(0.25, 0.30)),
        "exposure": float(rng.uniform(0.92, 1.08)),
        "gamma": float(rng.uniform(0.9, 1.1)),
    }


def build(out: Path, seed: int, n_images: int, size: int, grain: float = 0.0, second_prob: float = 0.35) -> list:
    rng = np.random.default_rng(seed)
    # images per patient: 2 or 3
    counts = []
    while sum(counts) < n_images:
        counts.append(int(rng.integers(2, 4)))
    counts[-1] -= sum(counts) - n_images
    if counts[-1] == 1 and len(counts) > 1:  # no single-image patients
        threes = [i for i, c in enumerate(counts) if c == 3]
        if threes:  # borrow one image from a 3-image patient
            counts[threes[-1]], counts[-1] = 2, 2
        else:
            counts.pop()
            counts[-1] += 1

    # balanced primary findings
    primaries = [PRIMARY_CLASSES[i % len(PRIMARY_CLASSES)] for i in range(n_images)]
    primaries = [primaries[i] for i in rng.permutation(n_images)]

    # patient-level split, ~70/15/15
    n_pat = len(counts)
    perm = rng.permutation(n_pat)
    n_val = round(0.15 * n_pat)
    n_test = round(0.15 * n_pat)
    split_of = {}
    for rank, p in enumerate(perm):
        split_of[int(p)] = "test" if rank < n_test else ("val" if rank < n_test + n_val else "train")

    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for stale in (out / sub).glob("[0-9][0-9][0-9][0-9].png"):  # left over from a larger run
            stale.unlink()
    rows = []
    idx = 0
    for p, k in enumerate(counts):
        prng = np.random.default_rng([seed, 1, p])
        anat = make_patient(prng)
        for _ in range(k):
            irng = np.random.default_rng([seed, 2, idx])
            primary = primaries[idx]
            findings = {}
            if primary != NO_FINDING:
                findings[primary] = sample_finding(primary, irng)
                if irng.random() < second_prob:
                    others = [f for f in FINDINGS if f != primary and len(blocked_sides(f, findings)) < 2]
                    second = others[int(irng.integers(len(others)))]
                    findings[second] = sample_finding(second, irng, blocked_sides(second, findings))
            regions: dict = {}
            arr = render_image(anat, findings, irng, size=size, grain=grain, regions=regions)
            rel = f"images/{idx:04d}.png"
            Image.fromarray(arr, mode="L").save(out / rel, optimize=True)
            # the primary finding's drawn region (empty for no finding): a segmentation target
            region = regions.get(primary, np.zeros((size, size), bool))
            mask_rel = f"masks/{idx:04d}.png"
            Image.fromarray(region.astype(np.uint8) * 255, mode="L").save(out / mask_rel, optimize=True)
            labels = [f for f in FINDINGS if f in findings] or [NO_FINDING]
            row = {
                "image": rel,
                "text": make_report(findings, irng),
                "finding": primary,
                "labels": "|".join(labels),
                "mask": mask_rel,
            }
            for f in FINDINGS:
                row[f.replace(" ", "_")] = int(f in findings)
            row.update(patient_id=f"P{p:04d}", sex=anat["sex"], age=anat["age"], split=split_of[p])
            rows.append(row)
            idx += 1

    columns = ["image", "text", "finding", "labels", "mask"] + [f.replace(" ", "_") for f in FINDINGS] + [
        "patient_id", "sex", "age", "split"]
    with open(out / "pairs.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    ap.add_argument("--n-images", type=int, default=600)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--grain", type=float, default=0.0,
                    help="std of extra per-pixel noise (e.g. 0.006); larger files")
    args = ap.parse_args(argv)

    rows = build(args.out, args.seed, args.n_images, args.size, grain=args.grain)
    per_finding = {c: sum(r["finding"] == c for r in rows) for c in PRIMARY_CLASSES}
    per_split = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    n_pat = len({r["patient_id"] for r in rows})
    print(f"wrote {len(rows)} pairs ({n_pat} patients) to {args.out} | primary: "
          + ", ".join(f"{k}={v}" for k, v in per_finding.items())
          + " | split: " + ", ".join(f"{k}={v}" for k, v in per_split.items()))


if __name__ == "__main__":
    main()
