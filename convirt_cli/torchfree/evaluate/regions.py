"""evaluate grounding: a table of (image, phrase, region) rows -> each phrase's map over its image scored against
its region (grounding.py). A region is a mask image (`--mask-col`) or boxes x, y, w, h in the image's pixels
(`--box-cols`, MS-CXR's layout read as is: several rows of one image and phrase are one region, their union).
Regions are compared on the model's square, the map's own frame: the mask (or box) goes through the image's
geometry (shorter side to S, centre crop).

Counted skips: a row without a mask or box, an empty mask, a region wholly outside the square the model sees. A
mask of another size than its image is scaled to it (counted); a box outside its image is an error naming the row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.evaluate.grounding import sample_scores, summarise
from convirt_cli.torchfree.explain import maps
from convirt_cli.torchfree.explain.views import fit_square


@dataclass
class Target:
    """One (image, phrase) with its region: a mask file or boxes in the image's pixels."""

    image: str
    phrase: str
    finding: str
    source: str  # file:row, for messages
    mask: Path | None = None
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    frame: tuple[float, float] | None = None  # (image_width, image_height) the boxes are given in, when the table says


def _box(row, cols: list[str]) -> tuple[float, float, float, float] | None:
    cells = [row.columns.get(c, "").strip() for c in cols]
    if not any(cells):
        return None
    try:
        x, y, w, h = (float(c) for c in cells)
    except ValueError:
        raise ConvirtError(f"{row.source}: box {','.join(cells)} in columns {','.join(cols)} is not four numbers") from None
    return x, y, w, h


def read_targets(rows, text_col: str, finding_col: str | None, mask_col: str | None, box_cols: list[str],
                 base: Path) -> tuple[list[Target], Counter]:
    """Rows (data/readers.Row) -> targets, grouped by (image, phrase), and the counted skips by reason."""
    skips: Counter = Counter()
    found: dict[tuple[str, str], Target] = {}
    for r in rows:
        phrase = r.text.strip()
        if not phrase:
            skips["no phrase"] += 1
            continue
        key = (str(r.image), phrase)
        t = found.get(key) or Target(str(r.image), phrase, r.columns.get(finding_col or "", "").strip() or phrase,
                                     r.source)
        if mask_col:
            cell = r.columns.get(mask_col, "").strip()
            if not cell:
                skips["no mask"] += 1
                continue
            t.mask = Path(cell) if Path(cell).is_absolute() else base / cell.replace("\\", "/")
        else:
            box = _box(r, box_cols)
            if box is None:
                skips["no box"] += 1
                continue
            t.boxes.append(box)
            if {"image_width", "image_height"} <= set(r.columns) and r.columns["image_width"].strip():
                t.frame = (float(r.columns["image_width"]), float(r.columns["image_height"]))
        found[key] = t
    return list(found.values()), skips


def region_of(t: Target, width: int, height: int, size: int, note: Callable[[str], None]) -> np.ndarray | None:
    """The target's region on the model's square (bool [S, S]); None for an empty mask (a skip)."""
    from PIL import Image

    full = np.zeros((height, width), bool)
    if t.mask is not None:
        try:
            m = Image.open(t.mask).convert("L")
        except OSError as e:
            raise ConvirtError(f"{t.source}: mask {t.mask}: {e}") from None
        if m.size != (width, height):
            note(f"{t.source}: mask {m.size[0]}x{m.size[1]} scaled to its image's {width}x{height}")
            m = m.resize((width, height), Image.Resampling.NEAREST)
        full = np.asarray(m) > 0
    sx, sy = (width / t.frame[0], height / t.frame[1]) if t.frame else (1.0, 1.0)
    for x, y, w, h in t.boxes:
        x, y, w, h = x * sx, y * sy, w * sx, h * sy
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width + 0.5 or y + h > height + 0.5:
            raise ConvirtError(f"{t.source}: box x={x:g} y={y:g} w={w:g} h={h:g} lies outside its image "
                               f"({width}x{height}); fix the row (boxes are x, y, w, h in the image's pixels)")
        full[round(y):round(y + h), round(x):round(x + w)] = True
    if not full.any():
        return None
    return fit_square(full.astype(np.uint8) * 255, size) > 127


def evaluate_grounding(encoder, targets: list[Target], sigma: float = maps.SIGMA, n_boot: int = 1000, seed: int = 0,
                       batch_size: int = 16, note: Callable[[str], None] = lambda line: None,
                       on_image: Callable[[int], None] = lambda n: None, skips: Counter | None = None) -> dict:
    """Score every target's map; returns the summary (grounding.summarise) with `skipped` counts by reason."""
    from convirt_cli.torchfree.explain.run import look

    skips = Counter() if skips is None else skips
    phrases = sorted({t.phrase for t in targets})
    vecs = dict(zip(phrases, encoder.encode_texts(phrases))) if phrases else {}
    by_image: dict[str, list[Target]] = {}
    for t in targets:
        by_image.setdefault(t.image, []).append(t)
    images = [{"path": p} for p in by_image]
    scores, findings = [], []

    def unreadable(item: dict, why: str) -> None:
        skips["unreadable image"] += len(by_image[item["path"]])
        on_image(1)

    for seen in look(encoder, images, batch_size, unreadable):
        for t in by_image[seen.item["path"]]:
            region = region_of(t, seen.crop.width, seen.crop.height, seen.crop.size, note)
            if region is None or not region.any():
                skips["empty mask" if region is None else "region outside the model's view"] += 1
                continue
            heat = maps.similarity_map(seen.cells, vecs[t.phrase], seen.crop.size, sigma)
            scores.append(sample_scores(heat, region))
            findings.append(t.finding)
        on_image(1)
    if not scores:
        raise ConvirtError(f"nothing to score: every row was skipped ({dict(skips)})")
    return summarise(scores, findings, n_boot, seed) | {"skipped": dict(skips), "sigma": sigma}


def load_targets(cfg, note: Callable[[str], None] = lambda line: None) -> tuple[list[Target], Counter]:
    """An EvaluateGroundingConfig's table -> targets and the skips counted while reading it."""
    from convirt_cli.torchfree.data.readers import find_table, read_rows

    rows = read_rows(cfg.data, image_col=cfg.image_col, text_col=cfg.text_col, metadata=False)
    if not rows:
        raise ConvirtError(f"{cfg.data}: no rows")
    cols = rows[0].columns
    need = [cfg.mask_col] if cfg.mask_col else list(cfg.box_cols)
    missing = [c for c in need + ([cfg.finding_col] if cfg.finding_col else []) if c not in cols]
    if missing:
        raise ConvirtError(f"{cfg.data}: no column {missing[0]!r} (columns: {', '.join(cols)})")
    finding = cfg.finding_col or ("category" if "category" in cols else None)
    table = find_table(Path(cfg.data))
    base = table.parent if table is not None else Path(cfg.data)
    return read_targets(rows, cfg.text_col, finding, cfg.mask_col, cfg.box_cols, base)
