"""Where explain's maps go: per (image, query) a picture (PNG) and/or the raw map (.npy, float32 [S, S] on the
model's square: the centre crop, shorter side resized to S), each written whole (temporary name, then rename),
named by position (NNNN-Q.png: image NNNN of the inputs, query Q) so no file name carries more than the input's;
and one row per map for jsonl / the HTML page."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from convirt_cli.torchfree.explain.run import Explained, Seen
from convirt_cli.torchfree.files import atomic_write_bytes


def row(seen: Seen, j: int, ex: Explained) -> dict:
    """The JSON line of one map: image, query, peak (x, y in the image's pixels), peak score, global score."""
    out = {"image": seen.item["path"]} | ({"slice": seen.item["slice"]} if seen.item.get("slice") is not None else {})
    out |= {"query": ex.query.label, "name": Path(seen.item["path"]).name, "id": f"{seen.index:04d}-{j}"}
    if ex.peak is not None:
        out |= {"peak_x": round(ex.peak[0], 1), "peak_y": round(ex.peak[1], 1), "peak_score": round(ex.peak[2], 6),
                "mean_cell_score": round(ex.mean_cell, 6)}
    if ex.score is not None:
        out["score"] = round(ex.score, 6)
    return out


def write_maps(stream: Iterable[tuple[Seen, list[Explained]]], out: Path, pictures: bool, arrays: bool) -> list[dict]:
    """Write each map's picture and/or array into `out`; returns the rows (with `picture` / `map`: file paths)."""
    from convirt_cli.torchfree.explain.render import overlay, png_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seen, explained in stream:
        for j, ex in enumerate(explained):
            r = row(seen, j, ex)
            if pictures:
                atomic_write_bytes(out / f"{r['id']}.png", png_bytes(overlay(seen, ex)))
                r["picture"] = str(out / f"{r['id']}.png")
            if arrays:
                buf = io.BytesIO()
                np.save(buf, (ex.heat if ex.heat is not None else ex.grid).astype(np.float32))
                atomic_write_bytes(out / f"{r['id']}.npy", buf.getvalue())
                r["map"] = str(out / f"{r['id']}.npy")
            rows.append(r)
    return rows
