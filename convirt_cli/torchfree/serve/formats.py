"""Search results as jsonl / csv / paths text: stable columns, one record per hit (gallery.py: html). `slice` and
`query_slice`: the axial slice of a volume (NIfTI) hit or query, blank for 2-D images."""

from __future__ import annotations

import csv
import io
import json

FIELDS = ["query", "query_kind", "rank", "score", "id", "path", "text", "source", "slice", "query_slice"]


def query_label(q: dict) -> tuple[str, str]:
    """A result's query record ({text} | {path} | {image: name} | {like: id}) -> (what it was, its kind)."""
    if "text" in q:
        return q["text"], "text"
    if "like" in q:
        return str(q["like"]), "item"
    return q.get("path") or q["image"], "image"


def records(results: list[dict]):
    for r in results:
        q = r["query"]
        query, kind = query_label(q)
        for h in r["hits"]:
            it = h["item"]
            yield {"query": query, "query_kind": kind,
                   "rank": h["rank"], "score": round(h["score"], 6), "id": it["id"], "path": it.get("path"),
                   "text": it.get("text"), "source": it.get("source"), "slice": it.get("slice"),
                   "query_slice": q.get("slice")}


def to_jsonl(results: list[dict]) -> str:
    return "".join(json.dumps({k: v for k, v in rec.items() if v is not None}, ensure_ascii=False) + "\n"
                   for rec in records(results))


def to_csv(results: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    for rec in records(results):
        w.writerow({k: "" if v is None else v for k, v in rec.items()})
    return buf.getvalue()


def to_paths(results: list[dict]) -> str:
    """One hit per line: the image path (text index: the text, newlines flattened)."""
    return "".join((rec["path"] or (rec["text"] or "").replace("\n", " ")) + "\n" for rec in records(results))
