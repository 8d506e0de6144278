"""embed: inputs -> encoder -> index folder; retrieve: queries -> one matrix product (blockwise) -> hits.

Torch-free; the encoder passed in decides whether torch runs at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.formats import matched_suffix
from convirt_cli.torchfree.serve.index import (
    REBUILD,
    Index,
    faiss_search,
    is_index_dir,
    next_id,
    open_index,
    write_index,
)
from convirt_cli.torchfree.serve.search import DamagedRows, check_scores, search


def part_bounds(n: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """Part `shard_index` of `num_shards` contiguous, near-equal parts of n inputs: [lo, hi)."""
    return n * shard_index // num_shards, n * (shard_index + 1) // num_shards


def embed_items(encoder, kind: str, items: list[dict], out: Path, append: bool = False, batch_size: int = 64,
                on_progress: Callable[[int], None] | None = None, part: tuple[int, int] = (0, 1)) -> dict:
    """Encode `items` ({path} or {text}, source) into the index at `out`; returns index.json + skipped list.

    Ids are input positions (after the existing index's ids with --append); skipped inputs keep theirs unused.
    part (index, of): only that contiguous share of the inputs, ids still their positions in all of them.
    """
    shard, shards = part
    total = len(items)
    lo, hi = part_bounds(total, shards, shard)
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
    if not ok and not append and shards == 1:
        raise ConvirtError(f"nothing to index: all {len(items)} inputs were skipped "
                           f"(first: {items[bad[0][0]].get('path', '')} {bad[0][1]})" if bad else "no inputs")
    kept = [{"id": base + i} | items[i] for i in ok]
    skipped = [{"id": base + i} | items[i] | {"reason": r} for i, r in bad]
    meta = {"fingerprint": encoder.fingerprint, "model": str(Path(encoder.path).resolve()), "kind": kind,
            "dim": int(encoder.dim), "backend": encoder.backend, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "next_id": base + len(items), "skipped": skipped}
    if shards > 1:
        meta["part"] = {"index": shard, "of": shards, "first_id": lo, "inputs": total}
    meta = write_index(out, emb, kept, meta, append=append)
    return meta | {"added": len(kept), "skipped_now": skipped}


def split_queries(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """Lines of a --queries file: image paths (by a format's suffix) vs texts."""
    images = [s for s in lines if matched_suffix(s)]
    return [s for s in lines if s not in images], images


def encode_queries(encoder, texts: Sequence[str], images: Sequence[str],
                   slices: str = "middle") -> tuple[np.ndarray, list[dict]]:
    """-> ([Q, d] unit rows, [{text} | {path [, slice]}]) texts first, then images (a volume: the slices that
    policy `slices` picks, one query each)."""
    from convirt_cli.torchfree.data.volumes import volume_slices

    parts, queries = [], []
    if texts:
        parts.append(encoder.encode_texts(list(texts)))
        queries += [{"text": t} for t in texts]
    if images:
        refs = [(str(Path(p).resolve()), k) for p in images for k in volume_slices(p, slices)]
        emb, _, bad = encoder.encode_images(refs)
        if bad:
            i, reason = bad[0]
            at = "" if refs[i][1] is None else f" slice {refs[i][1]}"
            raise ConvirtError(f"query image {refs[i][0]}{at}: cannot read it ({reason})")
        parts.append(emb)
        queries += [{"path": p} | ({} if k is None else {"slice": k}) for p, k in refs]
    if not queries:
        raise ConvirtError("no query: pass --query TEXT, --image PATH or --queries FILE|-")
    return np.concatenate(parts).astype(np.float32), queries


def retrieve(index: Index, q: np.ndarray, queries: list[dict], k: int = 10, exact: bool = False) -> list[dict]:
    """[{query, hits: [{rank, score, item}]}] ranked by cosine, all queries in one pass over the index."""
    if index.count == 0:
        raise ConvirtError(f"{index.path}: the index is empty")
    found = None if exact else faiss_search(index, q, k)
    try:
        if found is not None:
            check_scores(found[0])
        scores, rows = found if found is not None else search(index.embeddings, q, k)
    except DamagedRows as e:
        raise ConvirtError(f"{index.path / 'embeddings.npy'}: damaged ({e}); {REBUILD.format(path=index.path)}") from None
    return [{"query": qu, "hits": [{"rank": j + 1, "score": float(s), "item": index.items[int(r)]}
                                   for j, (s, r) in enumerate(zip(ss, rr)) if r >= 0]}
            for qu, ss, rr in zip(queries, scores, rows)]
