"""embed: inputs -> encoder -> index folder (searcher.py answers queries over it).

Torch-free; the encoder passed in decides whether torch runs at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.outputs import check_folder, locked
from convirt_cli.torchfree.progress import Advance
from convirt_cli.torchfree.serve.index import is_index_dir, next_id, open_index, write_index


def part_bounds(n: int, parts: int, part: int) -> tuple[int, int]:
    """Part `part` of `parts` contiguous, near-equal parts of n inputs: [lo, hi)."""
    return n * part // parts, n * (part + 1) // parts


def embed_items(encoder, kind: str, items: list[dict], out: Path, append: bool = False, batch_size: int = 64,
                on_progress: Advance | None = None, part: tuple[int, int] = (0, 1), wait: bool = False,
                inputs: Sequence[str | Path] = ()) -> dict:
    """Encode `items` ({path} or {text}, source, optional columns) into the index at `out`; returns index.json +
    skipped list.

    Ids are input positions (after the existing index's ids with --append); skipped inputs keep theirs unused.
    part (index, of): only that contiguous share of the inputs, ids still their positions in all of them.
    `out` must be absent, empty or an index, and no input (outputs.check_folder); it is locked from before its
    ids are read until the new rows are committed, so two appends at once add both their rows (`wait`: the second
    waits; else it stops naming the first's pid).
    """
    out = check_folder(out, "index", inputs=inputs)
    with locked(out, wait):
        return _embed_items(encoder, kind, items, out, append, batch_size, on_progress, part)


def _embed_items(encoder, kind: str, items: list[dict], out: Path, append: bool, batch_size: int,
                 on_progress: Advance | None, part: tuple[int, int]) -> dict:
    which, parts = part
    total = len(items)
    lo, hi = part_bounds(total, parts, which)
    items = items[lo:hi]
    if append and is_index_dir(out):
        old = open_index(out)
        if old.meta["fingerprint"] != encoder.fingerprint:
            raise ConvirtError(f"--append: {out} was built by model {old.meta['fingerprint']} ({old.meta.get('model')}); "
                               f"{encoder.path} is {encoder.fingerprint}; embed into a new --out")
        if old.meta["kind"] != kind:
            raise ConvirtError(f"--append: {out} holds {old.meta['kind']} embeddings; these inputs are {kind}")
    base = next_id(out) if append else lo
    if kind == "image":
        emb, ok, bad = encoder.encode_images([(it["path"], it.get("slice")) for it in items], batch_size=batch_size,
                                             on_progress=on_progress)
    else:
        ok = [i for i, it in enumerate(items) if it["text"].strip()]
        bad = [(i, it.get("problem") or "empty text") for i, it in enumerate(items) if not it["text"].strip()]
        if on_progress and bad:
            on_progress(len(bad))
        emb = encoder.encode_texts([items[i]["text"] for i in ok], batch_size=batch_size, on_progress=on_progress)
    finite = np.isfinite(emb).all(1) if len(emb) else np.ones(0, bool)
    if not finite.all():  # a model that outputs NaN for some input: skip and name those rows, never index them
        bad = sorted(bad + [(ok[j], "non-finite embedding") for j in np.flatnonzero(~finite)])
        ok = [i for i, f in zip(ok, finite) if f]
        emb = emb[finite]
    if not ok and not append and parts == 1:
        raise ConvirtError(f"nothing to index: all {len(items)} inputs were skipped "
                           f"(first: {items[bad[0][0]].get('path', '')} {bad[0][1]})" if bad else "no inputs")
    kept = [{"id": base + i} | items[i] for i in ok]
    skipped = [{"id": base + i} | items[i] | {"reason": r} for i, r in bad]
    meta = {"fingerprint": encoder.fingerprint, "model": str(Path(encoder.path).resolve()), "kind": kind,
            "dim": int(encoder.dim), "backend": encoder.backend, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "next_id": base + len(items), "skipped": skipped}
    if parts > 1:
        meta["part"] = {"index": which, "of": parts, "first_id": lo, "inputs": total}
    meta = write_index(out, emb, kept, meta, append=append)
    return meta | {"added": len(kept), "skipped_now": skipped}
