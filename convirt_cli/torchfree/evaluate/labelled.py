"""What the zero-shot protocols read: labelled images (evaluate retrieval, classify) and text prompts per class."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.progress import ProgressBar


def load_labelled(data: Path, image_col: str, label_col: str, ignore: list[str], text_col: str | None = None,
                  where: list[str] | tuple[str, ...] = (), join: list[Path] | tuple[Path, ...] = (),
                  progress: ProgressBar | None = None,
                  note: Callable[[str], None] = lambda line: None) -> tuple[list[str], list[str], list[str] | None]:
    """Rows with a label not in `ignore` (and kept by --where), each image once -> (paths, labels, texts or None).
    `note` hears, in one line each, what was left out and why."""
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.data.validate import select_rows
    from convirt_cli.torchfree.processes import cpu_workers

    rows = read_rows(data, image_col=image_col, text_col=None, workers=cpu_workers(), progress=progress,
                     join=join, warn=lambda line: note(f"warning: {line}"))
    if rows and label_col not in rows[0].columns:
        raise ConvirtError(f"{data}: no column '{label_col}' (columns: {', '.join(rows[0].columns)}); pass --label-col")
    has_text = bool(rows and text_col and (text_col in rows[0].columns or all(
        c.strip() in rows[0].columns for c in text_col.split(","))))
    if has_text:  # the texts as pretrain reads them (report files, joined columns), onto the same rows in order
        for row, again in zip(rows, read_rows(data, image_col=image_col, text_col=text_col, metadata=False)):
            row.text, row.text_problem = again.text, again.text_problem
    rows, left = select_rows(rows, where)
    if left:
        note(f"--where left out {len(left)} rows: " + ", ".join(f"{n} {r.removeprefix('--where ')}"
                                                             for r, n in Counter(r for _, r in left).items()))
    rows = [r for r in rows if r.columns.get(label_col, "").strip() not in ignore]
    first = {}
    for r in rows:  # an image listed twice (once per box or reader) would be its own best match
        first.setdefault(r.image, r)
    if len(first) < len(rows):
        note(f"{len(rows) - len(first)} rows name an image an earlier row names: each image is scored once, with "
             "its first row's label")
        rows = list(first.values())
    if not rows:
        raise ConvirtError(f"{data}: no rows with a label in '{label_col}'")
    return ([str(r.image) for r in rows], [r.columns[label_col].strip() for r in rows],
            [r.text for r in rows] if has_text else None)


def load_prompts(path: Path | None) -> dict[str, list[str]] | None:
    """--prompts FILE: {"label": ["text", ...]} (a single text may stand for a list of one)."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConvirtError(f"--prompts {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConvirtError(f'--prompts {path}: expected {{"label": ["text", ...]}}')
    return {str(k): [v] if isinstance(v, str) else list(v) for k, v in data.items()}
