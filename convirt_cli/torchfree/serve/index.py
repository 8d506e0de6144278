"""Index folders: embeddings.npy (float32 [N, d], L2-normalised, memory-mapped), items.jsonl (one line
per row: id, path or text, source) and index.json (fingerprint, kind, dim, count, backend, created).

index.json is the commit point: it is written last and its `count` says how many rows of the other
two files belong to the index. An append writes new embeddings.npy and items.jsonl (old rows + new, each
to a temporary name, then renamed) before index.json, so a crash at any moment leaves the previous index
readable exactly as it was; the price is one copy of the old rows per append. A fresh index is built in a
temporary folder and swapped in.

`<runs_dir>/latest-index` (one line, the index folder) names the last index embedded, so `convirt
retrieve` needs no --index.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import atomic_write_bytes, atomic_write_text, read_json, write_json, writing
from convirt_cli.torchfree.outputs import MARKER, check_folder, folder_kind, locked, mark, owned_dir

LATEST_INDEX = "latest-index"
FAISS_FILE, FAISS_META = "faiss.index", "faiss.json"


REBUILD = "rebuild it: `convirt embed INPUT --out {path}` (the folder's index.json names the model)"


class Items(Sequence):
    """items.jsonl read lazily: line offsets found once (numpy over the bytes), a line decoded when asked for.

    A retrieve over a million items decodes only its k hits. A line that does not decode names the file and line.
    """

    def __init__(self, path: Path, count: int, fix: str):
        self.path, self.count, self.fix = Path(path), count, fix
        data = self.path.read_bytes()
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
        if len(ends) < count:
            raise ConvirtError(f"{self.path}: {len(ends)} complete lines but index.json says {count} items "
                               f"(cut short?); {fix}")
        self._data, self._ends = data, ends[:count]
        self._starts = np.r_[0, self._ends[:-1] + 1] if count else self._ends

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.count))]
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(i)
        line = self._data[self._starts[i]:self._ends[i]]
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            item = None
        if not isinstance(item, dict):
            raise ConvirtError(f"{self.path}:{i + 1}: damaged line; {self.fix}")
        if type(item.get("id")) is not int or not isinstance(item.get("path", item.get("text")), str):
            raise ConvirtError(f"{self.path}:{i + 1}: damaged line (no id, or neither path nor text); {self.fix}")
        return item

    def row_of(self, item_id: int) -> int | None:
        """The row holding item `item_id`, or None. Rows are in ascending id order (embed numbers inputs in order,
        --append continues after the last id, merge sorts by id; write_index checks it), so a binary search decodes
        ~log2(N) lines."""
        lo, hi = 0, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            found = self[mid].get("id")
            if not isinstance(found, int):
                raise ConvirtError(f"{self.path}:{mid + 1}: an item without an integer id; {self.fix}")
            if found == item_id:
                return mid
            lo, hi = (mid + 1, hi) if found < item_id else (lo, mid)
        return None


@dataclass
class Index:
    path: Path
    meta: dict
    embeddings: np.ndarray  # [count, d], memmap
    items: Items

    @property
    def count(self) -> int:
        return int(self.meta["count"])


def is_index_dir(path: Path) -> bool:
    return (Path(path) / "index.json").is_file()


def index_meta(path: Path) -> dict:
    """index.json alone (which model made the index), before the index is opened."""
    path = Path(path)
    if not is_index_dir(path):
        raise ConvirtError(f"{path}: not an index (no index.json); make one with `convirt embed INPUT --out {path}`")
    return read_json(path / "index.json", REBUILD.format(path=path))


def open_index(path: Path, mmap: bool = True) -> Index:
    """An index folder, checked: index.json whole, embeddings.npy the shape it says, items.jsonl long enough.
    Anything damaged is one ConvirtError naming the file and how to rebuild it."""
    path = Path(path)
    fix = REBUILD.format(path=path)
    meta = index_meta(path)
    try:
        n, dim = int(meta["count"]), int(meta["dim"])
        meta["fingerprint"], meta["kind"]
    except (KeyError, TypeError, ValueError):
        raise ConvirtError(f"{path / 'index.json'}: damaged (count, dim, fingerprint or kind missing); {fix}") from None
    try:
        emb = np.load(path / "embeddings.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise ConvirtError(f"{path / 'embeddings.npy'}: missing; {fix}") from None
    except (ValueError, OSError, EOFError) as e:
        raise ConvirtError(f"{path / 'embeddings.npy'}: damaged ({str(e).splitlines()[0][:120]}); {fix}") from None
    if emb.ndim != 2 or emb.shape[0] < n or (n and emb.shape[1] != dim) or emb.dtype != np.float32:
        raise ConvirtError(f"{path / 'embeddings.npy'}: holds {emb.dtype} {emb.shape} but index.json says "
                           f"{n} x {dim} float32; {fix}")
    try:
        items = Items(path / "items.jsonl", n, fix)
    except FileNotFoundError:
        raise ConvirtError(f"{path / 'items.jsonl'}: missing; {fix}") from None
    return Index(path, meta, emb[:n], items)


def _write_npy(path: Path, parts: list[np.ndarray], dim: int) -> None:
    """Concatenate parts into a new .npy beside `path` (streamed in slices, by plain writes: a memory map's pages
    would meet a full disk as SIGBUS, not as an error), then rename. A failed write is one WriteError naming
    `path`; the temporary file is removed."""
    n = sum(len(p) for p in parts)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                          "shape": (n, dim)}
                np.lib.format.write_array_header_1_0(f, header)
                for p in parts:
                    for s in range(0, len(p), 1 << 16):  # in slices: an mmapped old part never loads whole
                        f.write(np.ascontiguousarray(p[s:s + (1 << 16)], dtype=np.float32).tobytes())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items)


def write_index(path: Path, embeddings: np.ndarray, items: list[dict], meta: dict, append: bool = False,
                wait: bool = False, inputs: Sequence[str | Path] = ()) -> dict:
    """Create (or with `append`, extend) the index at `path`; returns the committed index.json. `path` must be
    absent, empty or an index (outputs.check_folder); one writer at a time (`wait`: wait for the other)."""
    path = Path(path)
    if len(items) != len(embeddings):
        raise ValueError("one item per embedding row")
    ids = [it["id"] for it in items]
    if any(b <= a for a, b in pairwise(ids)):
        raise ValueError("item ids must ascend (Items.row_of finds an id by binary search)")
    dim = int(meta["dim"])
    if append and is_index_dir(path):
        path = check_folder(path, "index", inputs=inputs)
        with locked(path, wait):
            return _append(path, embeddings, items, meta, dim)
    meta = dict(meta, count=len(items))
    with owned_dir(path, "index", wait, inputs=inputs) as tmp:
        _write_npy(tmp / "embeddings.npy", [embeddings], dim)
        atomic_write_text(tmp / "items.jsonl", _jsonl(items))
        write_json(tmp / "index.json", meta)
    return meta


def _append(path: Path, embeddings: np.ndarray, items: list[dict], meta: dict, dim: int) -> dict:
    """New embeddings.npy and items.jsonl (old rows + new) renamed in, then index.json: the commit point."""
    old = open_index(path)
    if old.meta["fingerprint"] != meta["fingerprint"]:
        raise ConvirtError(f"--append: {path} was built by model {old.meta['fingerprint']} "
                           f"({old.meta.get('model')}), not {meta['fingerprint']}; embed into a new --out")
    if old.meta["kind"] != meta["kind"]:
        raise ConvirtError(f"--append: {path} holds {old.meta['kind']} embeddings, not {meta['kind']}")
    _write_npy(path / "embeddings.npy", [old.embeddings, embeddings], dim)
    atomic_write_text(path / "items.jsonl", _jsonl(list(old.items) + items))
    meta = old.meta | {k: v for k, v in meta.items() if k not in ("created", "skipped")}
    meta |= {"count": old.count + len(items), "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "skipped": old.meta.get("skipped", []) + meta.get("skipped", [])}
    (path / FAISS_FILE).unlink(missing_ok=True)  # stale now; `convirt index build` makes a new one
    if folder_kind(path) is not None and not (path / MARKER).is_file():
        mark(path, "index")  # an index made before markers
    write_json(path / "index.json", meta)  # commit
    return meta


def merge_indexes(parts: list[Path], out: Path, wait: bool = False) -> dict:
    """Join the parts of a split `embed --parts N` (or any indexes of one model and kind) into one index at `out`,
    rows in id order: a merge of all N parts equals one `embed` of the whole input, row for row."""
    if not parts:
        raise ConvirtError("index merge: name the part folders to join")
    check_folder(out, "index", inputs=parts)
    opened = []
    for p in parts:
        if not is_index_dir(p):
            raise ConvirtError(f"{p}: not an index folder (no index.json / embeddings.npy); "
                               + REBUILD.format(path=p))
        opened.append(open_index(p, mmap=True))
    first = opened[0]
    for idx in opened[1:]:
        for key in ("fingerprint", "kind", "dim"):
            if idx.meta[key] != first.meta[key]:
                raise ConvirtError(f"index merge: {idx.path} has {key} {idx.meta[key]} but {first.path} has "
                                   f"{first.meta[key]}; merge parts embedded by the same model")
    part_info = [idx.meta.get("part") for idx in opened]
    if all(part_info):
        of = {s["of"] for s in part_info}
        have = sorted(s["index"] for s in part_info)
        if len(of) > 1 or have != list(range(next(iter(of)))):
            want = max(of)
            missing = sorted(set(range(want)) - set(have))
            raise ConvirtError(f"index merge: parts {have} of {'/'.join(map(str, sorted(of)))}: " + (
                f"part(s) {missing} missing" if missing else "a part is named twice or the part counts differ"))
    opened.sort(key=lambda idx: (idx.meta.get("part") or {}).get("first_id", 0))
    items: list[dict] = []
    for idx in opened:
        items += list(idx.items)
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        raise ConvirtError(_shared_ids(items))
    order = np.argsort(ids, kind="stable")
    emb = np.concatenate([np.asarray(idx.embeddings) for idx in opened])[order]
    meta = {k: v for k, v in first.meta.items() if k not in ("part", "count", "skipped", "next_id", "updated")}
    meta |= {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "merged_from": [str(Path(p).resolve()) for p in parts],
             "next_id": max(int(idx.meta.get("next_id", 0)) for idx in opened),
             "skipped": sorted((s for idx in opened for s in idx.meta.get("skipped", [])), key=lambda s: s["id"])}
    return write_index(out, emb, [items[i] for i in order], meta, wait=wait, inputs=parts)


def _shared_ids(items: list[dict]) -> str:
    """Why two parts share an id: the same input in both, or indexes of different inputs (each counts from 0)."""
    first: dict[int, dict] = {}
    for it in items:
        seen = first.setdefault(it["id"], it)
        if seen is not it:
            what = {k: it.get(k) for k in ("path", "text")}
            if what == {k: seen.get(k) for k in ("path", "text")}:
                return (f"index merge: id {it['id']} ({it.get('path') or it.get('text', '')[:60]}) is in two parts: "
                        "the same inputs embedded twice; merge the disjoint parts of one `convirt embed --num-shards N`")
            return (f"index merge: id {it['id']} names different inputs in two parts ({seen.get('source')}, "
                    f"{it.get('source')}): these indexes were embedded from different inputs, each numbering its "
                    "items from 0; merge joins the parts of one `convirt embed --num-shards N`. To index different "
                    "inputs together, `convirt embed INPUT --out INDEX --append` each into one index")
    return "index merge: the parts share ids"


def next_id(path: Path) -> int:
    """Ids are input positions: a skipped input keeps its id unused, so ids never shift."""
    if not is_index_dir(path):
        return 0
    return int(read_json(Path(path) / "index.json").get("next_id", 0))


def set_latest_index(runs_dir: Path, index: Path) -> None:
    atomic_write_text(Path(runs_dir) / LATEST_INDEX, str(Path(index).resolve()) + "\n")


def latest_index(runs_dir: Path) -> Path:
    pointer = Path(runs_dir) / LATEST_INDEX
    if is_index_dir(pointer):  # a link a user made by hand
        return pointer
    if pointer.is_file():
        path = Path(pointer.read_text().strip())
        if is_index_dir(path):
            return path
    raise ConvirtError(f"no index given and none recorded in {pointer}; run `convirt embed INPUT --out DIR` "
                       "or pass --index DIR")


# exact search scans ~20 GB/s per query on one socket (RESULTS.md, retrieve_bench): 2 GiB is ~0.1 s, the edge of
# interactive; above it `--index-type auto` compresses (IVF-PQ) so memory and time per query shrink together
EXACT_MAX_BYTES = 2 << 30


def choose_index_type(n: int, d: int, exact_max_bytes: int = EXACT_MAX_BYTES) -> str:
    """auto: HNSW over the full vectors while an exact scan is still interactive, IVF-PQ above that."""
    return "ivfpq" if n * d * 4 > exact_max_bytes else "hnsw"


def _recall_at_10(index: Index, fi, rows: np.ndarray) -> float:
    """Recall@10 of FAISS index `fi` against exact search, the items at `rows` as queries, each query's own row
    left out of both lists."""
    from convirt_cli.torchfree.serve.search import search

    q = np.ascontiguousarray(index.embeddings[rows], dtype=np.float32)
    k = min(10, index.count - 1)
    if k <= 0:
        return 1.0
    _, exact = search(index.embeddings, q, k + 1)
    _, approx = fi.search(q, k + 1)

    def others(found, own):
        return [r for r in found if r != own and r >= 0][:k]

    return float(np.mean([len(set(others(a, i)) & set(others(e, i))) / k for a, e, i in zip(approx, exact, rows)]))


def build_faiss(index: Index, index_type: str = "auto", nlist: int | None = None, m: int = 32, ef_search: int = 128,
                nprobe: int = 16, sample: int = 1000, seed: int = 0, exact_max_bytes: int = EXACT_MAX_BYTES,
                wait: bool = False) -> dict:
    """Write faiss.index (+ faiss.json with its recall@10 against exact search on `sample` item queries).

    The queries are indexed items, so each query's own row is dropped from both result lists (leave-one-out):
    finding an item itself is trivial and would inflate the recall."""
    try:
        import faiss
    except ImportError:
        raise ConvirtError("FAISS is optional: pip install 'convirt[faiss]' (faiss-cpu)") from None
    d, n = int(index.meta["dim"]), index.count
    if n == 0:
        raise ConvirtError(f"{index.path}: empty index")
    x = np.ascontiguousarray(index.embeddings, dtype=np.float32)
    chosen_by = "given"
    if index_type == "auto":
        index_type = choose_index_type(n, d, exact_max_bytes)
        chosen_by = f"auto (exact scan {n * d * 4 / 2**30:.2f} GiB)"
    pq_bytes = None
    if index_type == "flat":
        fi = faiss.IndexFlatIP(d)
    elif index_type == "hnsw":
        fi = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        fi.hnsw.efSearch = ef_search
    elif index_type == "ivf":
        nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        fi = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        fi.train(x)
        fi.nprobe = min(nprobe, nlist)
    elif index_type == "ivfpq":  # d/8 sub-quantisers of 8 bits: 1/32 of the float32 vectors' memory
        nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        pq_bytes = next(b for b in (d // 8, d // 4, d // 2, d) if b > 0 and d % b == 0)
        fi = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
        if n < 256:
            raise ConvirtError(f"--index-type ivfpq needs at least 256 items to train its codebooks ({n} here); "
                               "use --index-type hnsw")
        fi.train(x[np.random.default_rng(seed).choice(n, size=min(n, 256 * max(nlist, 39)), replace=False)])
        fi.nprobe = min(max(nprobe, 32), nlist)
    else:
        raise ConvirtError(f"--index-type {index_type}: expected auto, flat, hnsw, ivf or ivfpq")
    fi.add(x)
    qi = np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False)
    recall = _recall_at_10(index, fi, qi)
    info = {"index_type": index_type, "chosen": chosen_by, "count": n, "recall_at_10": recall, "queries": len(qi),
            "nlist": nlist, "m": m, "ef_search": ef_search, "nprobe": getattr(fi, "nprobe", nprobe),
            "pq_bytes_per_vector": pq_bytes, "fingerprint": index.meta["fingerprint"]}
    with locked(index.path, wait, "--index"):
        if read_json(index.path / "index.json").get("count") != n:
            raise ConvirtError(f"{index.path} changed while the FAISS index was built (an --append); build again")
        atomic_write_bytes(index.path / FAISS_FILE, faiss.serialize_index(fi).tobytes())
        write_json(index.path / FAISS_META, info)
    return info


def open_faiss(index: Index):
    """faiss.index when it exists, matches the index (count and model) and FAISS is installed; else None (exact)."""
    fpath, mpath = index.path / FAISS_FILE, index.path / FAISS_META
    if not (fpath.is_file() and mpath.is_file()):
        return None
    info = read_json(mpath)
    if info.get("count") != index.count or info.get("fingerprint") != index.meta["fingerprint"]:
        return None
    try:
        import faiss
    except ImportError:
        return None
    return faiss.read_index(str(fpath))
