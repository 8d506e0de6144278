"""What `convirt embed INPUT` reads: a table or data folder (as pretrain reads it), a folder of images,
a text file of lines, one image, or `-` for lines on stdin. Each input gets its position as id; a volume (NIfTI)
gives one input per slice that the `slices` policy picks, each with its `slice` index."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from convirt_cli.torchfree.data.readers import absolute, find_table, read_rows, table_kind
from convirt_cli.torchfree.data.volumes import volume_slices
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.formats import matched_suffix


def _looks_like_images(lines: list[str]) -> bool:
    return bool(lines) and all(matched_suffix(s.strip()) for s in lines)


def image_items(path: str, source: str, slices: str) -> list[dict]:
    """One image input ({path, source}), or one per picked slice of a volume ({path, slice, source})."""
    return [{"path": path, "source": source} | ({} if k is None else {"slice": k, "source": f"{source} slice {k}"})
            for k in volume_slices(path, slices)]


def _lines(src: TextIO, name: str, kind: str | None, base: Path, slices: str) -> tuple[str, list[dict]]:
    raw = [(i, line.rstrip("\r\n")) for i, line in enumerate(src, start=1)]
    raw = [(i, s) for i, s in raw if s.strip()]
    kind = kind or ("image" if _looks_like_images([s for _, s in raw]) else "text")
    if kind == "image":
        return kind, [it for i, s in raw for it in image_items(str(absolute(base / s.strip())), f"{name}:{i}", slices)]
    return kind, [{"text": s, "source": f"{name}:{i}"} for i, s in raw]


def _no_columns(columns: list[str] | tuple[str, ...], what: str) -> None:
    if columns:
        raise ConvirtError(f"--columns {','.join(columns)}: {what} has no columns; give a table or a data folder")


def read_inputs(spec: str, kind: str | None = None, image_col: str = "image", text_col: str = "text",
                stdin: TextIO | None = None, slices: str = "middle",
                columns: list[str] | tuple[str, ...] = ()) -> tuple[str, list[dict]]:
    """INPUT -> (kind, [{path [, slice] | text, source, columns?}]) in input order. `kind` None: guessed (tables:
    image). `columns`: metadata columns each item keeps (a table's, or a DICOM's allow-listed ones) for search
    filters; only those named, so nothing else a table holds (a patient id) reaches the index."""
    if spec == "-":
        _no_columns(columns, "stdin's lines")
        src = stdin or sys.stdin
        if src is None:
            raise ConvirtError("INPUT -: stdin is closed; pipe the inputs in or name a file")
        return _lines(src, "stdin", kind, Path.cwd(), slices)
    path = Path(spec)
    if not path.exists():
        raise ConvirtError(f"{path}: no such file or folder")
    if path.is_file() and matched_suffix(path.name):
        _no_columns(columns, f"{path} (one image)")
        return "image", image_items(str(path.resolve()), path.name, slices)
    table = find_table(path) if path.is_dir() else (path if table_kind(path) else None)
    if path.is_file() and table is None:
        _no_columns(columns, f"{path} (a file of lines)")
        with path.open(encoding="utf-8", errors="replace") as f:
            return _lines(f, path.name, kind, path.parent, slices)
    kind = kind or "image"
    if kind == "text" and table is None:
        raise ConvirtError(f"{path}: --kind text needs a table with a text column or a text file of lines")
    rows = read_rows(path, image_col=image_col, text_col=text_col if kind == "text" else None,
                     metadata=bool(columns), slices=slices if kind == "image" else "middle")
    for col in columns:
        if rows and not any(col in r.columns for r in rows):
            raise ConvirtError(f"{path}: no column '{col}' for --columns (columns: {', '.join(rows[0].columns)})")
    kept = [{"columns": {c: r.columns.get(c, "") for c in columns}} if columns else {} for r in rows]
    if kind == "image":
        return kind, [{"path": str(r.image), "source": r.source} | ({} if r.slice is None else {"slice": r.slice}) | k
                      for r, k in zip(rows, kept)]
    return kind, [{"text": r.text, "source": r.source} | ({"problem": r.text_problem} if r.text_problem else {}) | k
                  for r, k in zip(rows, kept)]
