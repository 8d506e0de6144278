"""The search service: open a model and one or more indexes once, then answer many queries, from any thread.

`convirt retrieve` opens a Searcher for one command line; `convirt serve` keeps one open for its lifetime. A query
is a text, an image (a path, the file's bytes, or decoded pixels) or an item of the index ("more like this": its
own vector, the item itself left out of its hits). Every query of a call is scored in one pass over the index:
exact blockwise cosine (search.py), or the index's FAISS file when it matches and no `where` filter applies (a
filter is exact: the FAISS graph cannot skip rows it was not built to skip).

Thread safety: each call takes one snapshot of the index it searches, so `refresh()` (after `convirt embed
--append`, or a new index written in place) swaps in the new files for later calls while calls in flight finish
on the old ones (their memory map and item lines stay valid after the files are replaced). onnxruntime sessions
run concurrently; the encoder builds each once (encoder.py).

Ids: items are found by their `id` (items.jsonl), never by a path, so a client names an item without seeing where
it lives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.serve.index import REBUILD, Index, open_faiss, open_index
from convirt_cli.torchfree.serve.search import DamagedRows, check_scores, search

if TYPE_CHECKING:  # Pillow loads when an image query is met: a text query does not pay for it
    from convirt_cli.torchfree.imageio import ImageSource

MASKS_KEPT = 64  # distinct `where` filters whose row masks an open index keeps


@dataclass(frozen=True)
class Query:
    """One query: exactly one of a text, an image (path, file bytes or pixels) or an item id (`like`).
    `slice`: which slice of a volume (NIfTI) `image` names (None: a 2-D image, or a volume's middle slice).
    `name` says how results show an image given as bytes or pixels (an upload's file name).
    `like_index`: the open index that holds item `like` (None: the one searched); an item of an image index finds
    the reports of a report index of the same model, and is left out of its hits only in its own index."""

    text: str | None = None
    image: ImageSource | None = None
    like: int | None = None
    slice: int | None = None
    name: str | None = None
    like_index: str | None = None

    def check(self) -> None:
        given = [k for k in ("text", "image", "like") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConvirtError("a query is one text, one image or one item id"
                               + (f" (got {' and '.join(given)})" if given else " (got none)"))
        if self.text is not None and not self.text.strip():
            raise ConvirtError("empty text query: give some words")
        if self.like is not None and (isinstance(self.like, bool) or not isinstance(self.like, int)):
            raise ConvirtError(f"item id {self.like!r}: ids are integers (items.jsonl's id)")
        if self.slice is not None and not isinstance(self.image, (str, Path)):
            raise ConvirtError("a slice belongs to an image file's path (a volume)")
        if self.like_index is not None and self.like is None:
            raise ConvirtError("like_index names the index of a `like` item: give the item id too")

    def shown(self) -> dict:
        """What results say the query was: {text}, {path} (absolute), {image: name} or {like: id}."""
        if self.text is not None:
            return {"text": self.text}
        if self.like is not None:
            return {"like": self.like} | ({} if self.like_index is None else {"like_index": self.like_index})
        if isinstance(self.image, (str, Path)):
            return {"path": str(Path(self.image).resolve())} | ({} if self.slice is None else {"slice": self.slice})
        if self.name:
            return {"image": self.name}
        if isinstance(self.image, np.ndarray):
            return {"image": f"pixels {'x'.join(map(str, self.image.shape))}"}
        return {"image": f"{len(self.image)} bytes"}


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """index.json's identity: every commit (append, merge, a new index swapped in) replaces it by a rename."""
    try:
        st = (Path(path) / "index.json").stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class OpenIndex:
    """An index as one search sees it: the files opened at one commit, plus what searches over it cache (the FAISS
    index, metadata columns, row masks of `where` filters)."""

    def __init__(self, path: Path, tries: int = 5):
        for attempt in range(tries):  # a commit landing mid-open: open again, the files of one commit only
            stamp = _stamp(path)
            try:
                index = open_index(path)
            except ConvirtError:
                if attempt + 1 == tries:
                    raise
                time.sleep(0.05)
                continue
            if _stamp(path) == stamp:
                break
            time.sleep(0.01)
        self.index, self.stamp = index, stamp
        self._lock = threading.Lock()
        self._faiss: object = False  # False: not looked for yet; None: none usable
        self._columns: dict[str, np.ndarray] | None = None
        self._masks: dict[tuple[str, ...], np.ndarray] = {}

    def faiss(self):
        if self._faiss is False:
            with self._lock:
                if self._faiss is False:
                    self._faiss = open_faiss(self.index)
        return self._faiss

    def columns(self) -> dict[str, np.ndarray]:
        """Each metadata column stored with the items (`embed --columns`) as an array of lower-cased values, [N]."""
        if self._columns is None:
            with self._lock:
                if self._columns is None:
                    rows = [it.get("columns") or {} for it in self.index.items]
                    names = sorted({c for r in rows for c in r})
                    self._columns = {c: np.array([str(r.get(c, "")).strip().lower() for r in rows], dtype=object)
                                     for c in names}
        return self._columns

    def allowed(self, where: Sequence[str]) -> np.ndarray:
        """bool [N]: the rows a `where` filter keeps (data/where.py's grammar and meaning, on items' columns)."""
        from convirt_cli.torchfree.data.where import parse_where

        key = tuple(sorted(where))
        if key in self._masks:
            return self._masks[key]
        try:
            conditions = parse_where(list(where))
        except ValueError as e:
            raise ConvirtError(f"where {e}") from None
        columns = self.columns()
        mask = np.ones(self.index.count, bool)
        for col, (values, keep) in conditions.items():
            if col not in columns:
                have = ", ".join(columns) or "none"
                raise ConvirtError(f"{self.index.path}: its items have no column '{col}' to filter on (stored: {have});"
                                   f" embed with --columns {col} to keep it")
            mask &= np.isin(columns[col], list(values)) == keep
        with self._lock:
            if len(self._masks) >= MASKS_KEPT:
                self._masks.pop(next(iter(self._masks)), None)
            self._masks[key] = mask
        return mask


class Searcher:
    """`Searcher(index_dir)` or `Searcher({"images": dir1, "reports": dir2})`: indexes of one model, searched by
    name (the default: the first). `model`: a run or export folder (default: the one the first index names)."""

    def __init__(self, indexes: str | Path | Mapping[str, str | Path], model: str | Path | None = None, *,
                 backend: str = "auto", device: str = "auto", runs_dir: Path = Path("runs"),
                 threads: int | None = None, workers: int | None = None, bulk: bool = False,
                 note: Callable[[str], None] | None = None):
        from convirt_cli.torchfree.serve.backends import open_encoder

        paths = {Path(indexes).name: Path(indexes)} if isinstance(indexes, (str, Path)) else \
            {str(name): Path(p) for name, p in indexes.items()}
        if not paths:
            raise ConvirtError("no index to search: give an index folder")
        self._lock = threading.Lock()
        self._open = {name: OpenIndex(p) for name, p in paths.items()}
        first = self.index()
        self.encoder = open_encoder(model or first.meta.get("model"), backend, device, runs_dir, threads,
                                    note=note, bulk=bulk, workers=workers)
        for entry in self._open.values():
            self._check_model(entry.index)

    @property
    def names(self) -> list[str]:
        return list(self._open)

    def _entry(self, name: str | None) -> OpenIndex:
        if name is None:
            return next(iter(self._open.values()))
        try:
            return self._open[name]
        except KeyError:
            raise ConvirtError(f"no index named {name!r} (open: {', '.join(self._open)})") from None

    def index(self, name: str | None = None) -> Index:
        return self._entry(name).index

    def columns(self, name: str | None = None, values: int = 0) -> dict[str, list[str] | None]:
        """The metadata columns the index's items hold (`embed --columns`), what a `where` filter may name -> each
        one's distinct values (lower-cased, as filters compare them) when it has at most `values` of them, else
        None."""
        out: dict[str, list[str] | None] = {}
        for col, column in self._entry(name).columns().items():
            distinct = np.unique(column.astype(str)) if values else ()
            out[col] = [str(v) for v in distinct] if 0 < len(distinct) <= values else None
        return out

    def _check_model(self, index: Index) -> None:
        enc = self.encoder
        if enc.fingerprint != index.meta["fingerprint"]:
            raise ConvirtError(f"{index.path} was built by another model (fingerprint {index.meta['fingerprint']}, "
                               f"{index.meta.get('model')}); {enc.path} is {enc.fingerprint}. Re-embed with this "
                               "model or pass the index's --model")

    def item(self, item_id: int, index: str | None = None) -> dict:
        """items.jsonl's record of item `item_id` (id, path or text, source, stored columns)."""
        idx = self.index(index)
        return idx.items[self._row(idx, item_id)]

    @staticmethod
    def _row(idx: Index, item_id: int) -> int:
        row = idx.items.row_of(item_id) if isinstance(item_id, int) and not isinstance(item_id, bool) else None
        if row is None:
            raise ConvirtError(f"{idx.path}: no item with id {item_id!r} (ids are items.jsonl's `id`)")
        return row

    def encode(self, queries: Sequence[Query], index: str | None = None) -> np.ndarray:
        """[Q, d] unit rows, in the order given: texts in one batch, images in one, items read from the index."""
        return self._vectors(list(queries), self.index(index))[0]

    def _vectors(self, queries: list[Query], idx: Index) -> tuple[np.ndarray, list[int]]:
        """([Q, d], the row in `idx` of each `like` query's own item, else -1)."""
        out = np.zeros((len(queries), int(idx.meta["dim"])), np.float32)
        own = [-1] * len(queries)
        texts = [i for i, q in enumerate(queries) if q.text is not None]
        images = [i for i, q in enumerate(queries) if q.image is not None]
        if texts:
            out[texts] = self.encoder.encode_texts([queries[i].text for i in texts])
        if images:
            refs = [(q.image, q.slice) if isinstance(q.image, (str, Path)) else q.image
                    for q in (queries[i] for i in images)]
            emb, _, bad = self.encoder.encode_images(refs)
            if bad:
                j, reason = bad[0]
                shown = queries[images[j]].shown()
                at = "" if shown.get("slice") is None else f" slice {shown['slice']}"
                raise ConvirtError(f"query image {shown.get('path') or shown['image']}{at}: cannot read it ({reason})")
            out[images] = emb
        for i, q in enumerate(queries):
            if q.like is not None:
                other = None if q.like_index is None else self.index(q.like_index)
                src = idx if other is None or other.path == idx.path else other  # this call's snapshot if the same
                row = self._row(src, q.like)
                out[i] = src.embeddings[row]
                own[i] = row if src is idx else -1
        return out, own

    def search(self, queries: Query | Sequence[Query], k: int = 10, offset: int = 0, where: Sequence[str] = (),
               index: str | None = None, exact: bool = False) -> list[dict]:
        """[{query, hits: [{rank, score, item}]}] per query: hits `offset`+1 .. `offset`+k by cosine (ties: the
        lower row). Exact search pages consistently (pages of k equal one search of offset+k); FAISS is approximate.
        `where`: ["view=PA,AP", "sex!=F"] on the items' stored columns. A `like` query's own item is never among
        its hits."""
        queries = [queries] if isinstance(queries, Query) else list(queries)
        if not queries:
            raise ConvirtError("no query: give a text, an image or an item id")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConvirtError(f"k {k!r}: ask for at least 1 result")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ConvirtError(f"offset {offset!r}: a count of results to skip, 0 or more")
        for q in queries:
            q.check()
        entry = self._entry(index)  # this call's snapshot: a refresh() meanwhile does not touch it
        idx = entry.index
        if idx.count == 0:
            raise ConvirtError(f"{idx.path}: the index is empty")
        allowed = entry.allowed(where) if where else None
        vectors, own = self._vectors(queries, idx)
        want = offset + k + (1 if max(own) >= 0 else 0)
        scores, rows = self._ranked(entry, vectors, want, allowed, exact)
        results = []
        for q, ss, rr, mine in zip(queries, scores, rows, own):
            kept = [(s, r) for s, r in zip(ss, rr) if r >= 0 and r != mine][offset:offset + k]
            results.append({"query": q.shown(), "hits": [{"rank": offset + j + 1, "score": float(s),
                                                          "item": idx.items[int(r)]} for j, (s, r) in enumerate(kept)]})
        return results

    @staticmethod
    def _ranked(entry: OpenIndex, vectors: np.ndarray, want: int, allowed: np.ndarray | None,
                exact: bool) -> tuple[np.ndarray, np.ndarray]:
        idx = entry.index
        fi = None if exact or allowed is not None else entry.faiss()
        try:
            if fi is None:
                return search(idx.embeddings, vectors, want, allowed=allowed)
            scores, rows = fi.search(np.ascontiguousarray(vectors, dtype=np.float32), min(want, idx.count))
            check_scores(np.where(rows >= 0, scores, 0))
            return scores, rows.astype(np.int64)
        except DamagedRows as e:
            raise ConvirtError(f"{idx.path / 'embeddings.npy'}: damaged ({e}); {REBUILD.format(path=idx.path)}") from None

    def refresh(self) -> list[str]:
        """Reopen every index whose index.json changed since it was opened (one stat per index: cheap enough per
        request). Later calls see the new items; calls in flight finish on the old files. Returns the names
        reopened. A new index of another model, or one that stays damaged, raises and the old one stays open."""
        changed = []
        for name, entry in list(self._open.items()):
            if _stamp(entry.index.path) == entry.stamp:
                continue
            fresh = OpenIndex(entry.index.path)
            self._check_model(fresh.index)
            with self._lock:
                self._open[name] = fresh
            changed.append(name)
        return changed
