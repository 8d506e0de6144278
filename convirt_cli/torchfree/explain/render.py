"""explain's pictures: the image through its window (the square the model saw) with the map as a colour layer, a
scale bar and the phrase; PCA colours for a query-free look; an HTML page of many. Pillow only. Nothing from a
file's metadata is drawn: only pixels, the phrase and the numbers of the map."""

from __future__ import annotations

import html
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from convirt_cli.torchfree.explain import maps
from convirt_cli.torchfree.explain.run import Explained, Seen

SHOW = 384  # the square is drawn at this size (or the crop's own, if smaller)
BAR, TITLE = 56, 22  # scale-bar column and phrase band, pixels
# a perceptual blue -> yellow ramp (viridis' end points and midpoints), interpolated
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


def colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB [..., 3] along the ramp."""
    v = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - lo)[..., None]
    return (_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t).round().astype(np.uint8)


def _square(seen: Seen) -> tuple[np.ndarray, int]:
    c = seen.crop
    side = int(min(SHOW, c.side))
    box = tuple(round(v) for v in (c.left, c.top, c.left + c.side, c.top + c.side))
    im = Image.fromarray(seen.picture).crop(box).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(im, np.float64), side


def overlay(seen: Seen, ex: Explained, alpha: float = 0.45) -> Image.Image:
    """The picture: grey square + map colours (min-max of this map), a bar from its min to max, the phrase above."""
    grey, side = _square(seen)
    if ex.heat is None:  # PCA colours
        layer = np.stack([maps.upsample(ex.grid[..., k], side, side) for k in range(3)], -1) * 255
        lo = hi = None
    else:
        fine = maps.upsample(ex.grid, side, side)
        lo, hi = float(fine.min()), float(fine.max())
        layer = colour(maps.minmax(fine)).astype(np.float64)
    rgb = (grey[..., None] * (1 - alpha) + layer * alpha).clip(0, 255).astype(np.uint8)
    canvas = Image.new("RGB", (side + BAR, side + TITLE), "white")
    canvas.paste(Image.fromarray(rgb), (0, TITLE))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((4, 4), ex.query.label[:80], fill="black", font=font)
    if lo is not None:
        ramp = colour(np.linspace(1, 0, side))[:, None].repeat(12, 1)
        canvas.paste(Image.fromarray(ramp), (side + 6, TITLE))
        draw.text((side + 20, TITLE), f"{hi:.2f}", fill="black", font=font)
        draw.text((side + 20, TITLE + side - 12), f"{lo:.2f}", fill="black", font=font)
        if ex.peak is not None:
            row, col = seen.crop.to_model(ex.peak[0], ex.peak[1])
            px, py = (col + 0.5) * side / seen.crop.size, TITLE + (row + 0.5) * side / seen.crop.size
            draw.ellipse((px - 4, py - 4, px + 4, py + 4), outline="red", width=2)
    return canvas


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def page(rows: list[dict], title: str = "convirt explain") -> str:
    """One HTML page of the written pictures (relative links beside it), with each map's peak and score."""
    cards = []
    for r in rows:
        cap = html.escape(r["query"])
        name = html.escape(r["name"])
        nums = "" if r.get("peak_score") is None else f"<br>peak {r['peak_score']:.3f} at ({r['peak_x']:.0f}, " \
                                                       f"{r['peak_y']:.0f})"
        cards.append(f'<figure><img src="{html.escape(r["picture"])}" alt="{cap}"><figcaption><b>{cap}</b><br>'
                     f'{name}{nums}</figcaption></figure>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:.5em;vertical-align:top}"
            "img{max-width:440px}figcaption{font-size:13px}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{''.join(cards)}</body></html>\n")
