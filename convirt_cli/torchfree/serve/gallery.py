"""A self-contained HTML gallery of retrieval results: thumbnails inlined as base64 JPEG, no links out."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from convirt_cli.torchfree.imageio import open_gray


def thumbnail_data_uri(path: str | Path, size: int = 160, slice: int | None = None) -> str | None:
    try:
        im = open_gray(path, draft=size, slice=slice)  # DICOM, NIfTI and 16-bit images too, the default window
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a vanished file shows as a placeholder, not a crash
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _name(item: dict) -> str:
    """An image item's file name, and its slice for a slice of a volume."""
    name = Path(item["path"]).name
    return name if item.get("slice") is None else f"{name} slice {item['slice']}"


def _card(item: dict, score: float, rank: int) -> str:
    label = html.escape(_name(item) if "path" in item else item.get("text", "")[:200])
    if "path" in item:
        uri = thumbnail_data_uri(item["path"], slice=item.get("slice"))
        media = f'<img src="{uri}" alt="{label}">' if uri else '<div class="missing">image unavailable</div>'
    else:
        media = f'<div class="text">{label}</div>'
    return (f'<figure>{media}<figcaption>#{rank} <b>{score:.3f}</b><br>'
            f'<span title="{html.escape(str(item.get("source", "")))}">{label if "path" in item else ""}'
            f' id {item["id"]}</span></figcaption></figure>')


def render(results: list[dict], title: str = "convirt retrieve") -> str:
    """results: [{query: {text | path | image | like}, hits: [{item, score}]}] -> one HTML document."""
    sections = []
    for r in results:
        q = r["query"]
        if "path" in q:
            uri = thumbnail_data_uri(q["path"], slice=q.get("slice"))
            head = (f'<img class="query" src="{uri}" alt="query">' if uri else "") + html.escape(
                q["path"] + ("" if q.get("slice") is None else f" slice {q['slice']}"))
        elif "text" in q:
            head = "&ldquo;" + html.escape(q["text"]) + "&rdquo;"
        else:
            head = html.escape(f"more like id {q['like']}" if "like" in q else str(q["image"]))
        cards = "".join(_card(h["item"], h["score"], i + 1) for i, h in enumerate(r["hits"]))
        sections.append(f'<section><h2>{head}</h2><div class="grid">{cards}</div></section>')
    style = ("body{font-family:sans-serif;margin:1em;background:#fafafa}"
             ".grid{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:170px;background:#fff;"
             "border:1px solid #ddd;padding:4px;font-size:12px;word-break:break-all}"
             "figure img{max-width:160px;max-height:160px;display:block;margin:auto}"
             "img.query{max-height:120px;vertical-align:middle;margin-right:8px}.text{font-size:12px}"
             ".missing{height:160px;color:#999}h2{font-size:15px}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n")
