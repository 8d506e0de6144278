"""Retrieval results as jsonl / csv / paths / html text: stable columns, one record per hit. `slice` and
`query_slice`: the axial slice of a volume (NIfTI) hit or query, blank for 2-D images."""

from __future__ import annotations

import csv
import io
import json

FIELDS = ["query", "query_kind", "rank", "score", "id", "path", "text", "source", "slice", "query_slice"]


def records(results: list[dict]):
    for r in results:
        q = r["query"]
        for h in r["hits"]:
            it = h["item"]
            yield {"query": q.get("text", q.get("path")), "query_kind": "text" if "text" in q else "image",
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
