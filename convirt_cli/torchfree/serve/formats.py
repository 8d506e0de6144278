"""Search results as jsonl / csv / paths text: stable columns, one record per hit (gallery.py: html). `slice` and
`query_slice`: the axial slice of a volume (NIfTI) hit or query, blank for 2-D images."""

from __future__ import annotations

import csv
import io
import json

FIELDS = ["query", "query_kind", "rank", "score", "id", "path", "text", "source", "slice", "query_slice"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting so as a formula


def spreadsheet_safe(cell: object) -> object:
    """A text cell a spreadsheet would run as a formula gets a leading ' (OWASP's advice on CSV injection): a
    report reading '=HYPERLINK(...)' or '-2 cm nodule' stays text. Numbers are left as they are."""
    if isinstance(cell, str) and cell.startswith(FORMULA_START):
        return "'" + cell
    return cell


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
    """A header, then one row per hit; text cells safe to open in a spreadsheet. A row with a carriage return in a
    cell is quoted whole (the csv module quotes only the line terminator's characters, here \\n)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    quoted = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writeheader()
    for rec in records(results):
        row = {k: "" if v is None else spreadsheet_safe(v) for k, v in rec.items()}
        (quoted if any("\r" in str(v) for v in row.values()) else w).writerow(row)
    return buf.getvalue()


def to_paths(results: list[dict], null: bool = False) -> str:
    """One hit per line: the image path, a newline inside it written as the two characters \\n (text index: the
    text, newlines flattened). null: each exactly as it is, ended by NUL (as `find -print0`, for `xargs -0`)."""
    out = []
    for rec in records(results):
        if null:
            out.append((rec["path"] or rec["text"] or "") + "\0")
        elif rec["path"] is not None:
            out.append(rec["path"].replace("\n", "\\n").replace("\r", "\\r") + "\n")
        else:
            out.append(" ".join((rec["text"] or "").splitlines()) + "\n")
    return "".join(out)


def paths_with_newlines(results: list[dict]) -> int:
    """How many hits' paths to_paths writes escaped (without null)."""
    return sum("\n" in p or "\r" in p for rec in records(results) if (p := rec["path"]) is not None)
