"""Pure-numpy parts of the fast path against independent references: blockwise search vs brute force,
Precision@k on a hand-worked example, AUC vs scikit-learn, output formats, the HTML gallery."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from convirt_cli.torchfree.evaluate.zeroshot import precision_report, split_queries
from convirt_cli.torchfree.serve import formats
from convirt_cli.torchfree.serve.gallery import render
from convirt_cli.torchfree.serve.search import search


def brute_force(x: np.ndarray, q: np.ndarray, k: int):
    """Reference: full score matrix, per query a stable sort by (-score, row)."""
    s = q @ x.T
    rows = np.array([sorted(range(len(x)), key=lambda j: (-s[i, j], j))[:k] for i in range(len(q))])
    return np.take_along_axis(s, rows, 1), rows


def unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("block_bytes", [4 * 8 * 7, 4 * 8 * 64, 1 << 20])  # 7 rows, 64 rows, all at once
def test_blockwise_search_equals_brute_force(block_bytes):
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(300, 8)))
    x[50] = x[10]  # exact ties: the lower row must come first, across blocks too
    x[299] = x[10]
    q = unit(np.concatenate([rng.normal(size=(5, 8)), x[10:11]]))
    s, r = search(x, q, k=12, block_bytes=block_bytes)
    rs, rr = brute_force(x, q, 12)
    np.testing.assert_array_equal(r, rr)
    np.testing.assert_allclose(s, rs, rtol=1e-6, atol=1e-6)
    assert list(r[-1][:3]) == [10, 50, 299]


def test_search_k_larger_than_index_and_memmap(tmp_path):
    rng = np.random.default_rng(1)
    x = unit(rng.normal(size=(5, 4)))
    np.save(tmp_path / "e.npy", x)
    mm = np.load(tmp_path / "e.npy", mmap_mode="r")
    _, r = search(mm, x[:2], k=10, block_bytes=32)
    assert r.shape == (2, 5)
    np.testing.assert_array_equal(r, brute_force(x, x[:2], 5)[1])


def test_precision_at_k_hand_worked():
    # 2 queries (A, B), 4 candidates labelled A A B B.
    # query A ranks candidates 2,0,3,1 -> labels B A B A: P@1 = 0, P@2 = 1/2, P@4 = 2/4
    # query B ranks candidates 2,3,0,1 -> labels B B A A: P@1 = 1, P@2 = 1,   P@4 = 2/4
    sim = np.array([[0.8, 0.1, 0.9, 0.5],
                    [0.3, 0.2, 0.9, 0.8]])
    rep = precision_report(sim, ["A", "B"], ["A", "A", "B", "B"], ks=[1, 2, 4])
    assert rep["per_class"]["A"] == {"P@1": 0.0, "P@2": 0.5, "P@4": 0.5}
    assert rep["per_class"]["B"] == {"P@1": 1.0, "P@2": 1.0, "P@4": 0.5}
    assert rep["mean"] == {"P@1": 0.5, "P@2": 0.75, "P@4": 0.5}


def test_precision_mean_is_over_classes_not_queries():
    # class A has 2 queries (P@1 = 1 and 0), class B one query (P@1 = 1): class mean (0.5 + 1) / 2
    sim = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    rep = precision_report(sim, ["A", "A", "B"], ["A", "B"], ks=[1])
    assert rep["per_class"]["A"]["P@1"] == 0.5 and rep["mean"]["P@1"] == 0.75


def test_split_queries_holds_out_per_class_and_skips_small_classes():
    labels = ["a"] * 10 + ["b"] * 4 + ["c"] * 3
    q, c, classes = split_queries(labels, per_class=2, seed=3)
    assert classes == ["a", "b"]
    assert sorted(labels[i] for i in q) == ["a", "a", "b", "b"]
    assert sorted(q + c) == list(range(len(labels))) and not set(q) & set(c)


RESULTS = [{"query": {"text": "left effusion"},
            "hits": [{"rank": 1, "score": 0.9, "item": {"id": 3, "path": "/d/a b.png", "source": "t.csv:5"}},
                     {"rank": 2, "score": 0.5, "item": {"id": 7, "path": "/d/c.png", "source": "t.csv:9"}}]}]


def test_formats_are_stable_and_parseable():
    lines = formats.to_jsonl(RESULTS).splitlines()
    assert [json.loads(line)["id"] for line in lines] == [3, 7]
    assert json.loads(lines[0]) == {"query": "left effusion", "query_kind": "text", "rank": 1, "score": 0.9, "id": 3,
                                    "path": "/d/a b.png", "source": "t.csv:5"}
    assert formats.to_paths(RESULTS) == "/d/a b.png\n/d/c.png\n"
    csv_text = formats.to_csv(RESULTS)
    assert csv_text.splitlines()[0] == ",".join(formats.FIELDS)
    assert csv_text.splitlines()[1].startswith("left effusion,text,1,0.9,3,/d/a b.png,")


def test_html_gallery_is_self_contained(tmp_path):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("L", (300, 200), 128).save(img)
    results = [{"query": {"text": "<script>alert(1)</script>"},
                "hits": [{"rank": 1, "score": 0.7, "item": {"id": 0, "path": str(img), "source": "s"}},
                         {"rank": 2, "score": 0.1, "item": {"id": 1, "path": str(tmp_path / "gone.png"), "source": "s"}}]}]
    page = render(results)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<script>" not in page  # the query text is escaped
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/jpeg;base64,")  # inlined, nothing linked
    assert "image unavailable" in page and "0.700" in page
    assert not re.search(r'(href|src)="(?!data:)', page)


def test_faiss_recall_is_leave_one_out_and_matches_a_plain_count(tmp_path):
    """An approximate HNSW (small m, efSearch) on random vectors: the reported recall@10 equals a count done
    here, with each query's own row left out of both lists (else every query finds itself: inflated)."""
    faiss = pytest.importorskip("faiss")
    from convirt_cli.torchfree.serve.index import build_faiss, open_index, write_index

    x = unit(np.random.default_rng(3).normal(size=(3000, 32)))
    write_index(tmp_path / "ix", x, [{"id": i, "text": str(i)} for i in range(len(x))],
                {"dim": 32, "fingerprint": "f" * 16, "kind": "text", "model": "test"})
    info = build_faiss(open_index(tmp_path / "ix"), "hnsw", m=4, ef_search=10, sample=200, seed=5)
    fi = faiss.read_index(str(tmp_path / "ix" / "faiss.index"))
    qi = np.random.default_rng(5).choice(len(x), size=200, replace=False)
    _, approx = fi.search(x[qi], 11)
    hits = []
    for i, a in zip(qi, approx):
        s = x @ x[i]
        s[i] = -np.inf
        exact = set(np.argsort(-s, kind="stable")[:10].tolist())
        hits.append(len(exact & set([r for r in a.tolist() if r != i][:10])) / 10)
    assert info["recall_at_10"] == pytest.approx(np.mean(hits))
    assert 0.2 < info["recall_at_10"] < 0.99  # approximate for real: a self-match would not be counted


def test_faiss_auto_compresses_above_the_interactive_size(tmp_path):
    """--index-type auto: HNSW while an exact scan stays under the interactive budget, IVF-PQ above it (a tiny budget
    here stands in for an archive-sized index); its recall@10 against exact search is measured and reported."""
    pytest.importorskip("faiss")
    from convirt_cli.torchfree.serve.index import (
        EXACT_MAX_BYTES,
        build_faiss,
        choose_index_type,
        open_index,
        write_index,
    )

    assert choose_index_type(1_000_000, 512) == "hnsw" and choose_index_type(2_000_000, 512) == "ivfpq"
    assert 1_000_000 * 512 * 4 <= EXACT_MAX_BYTES < 2_000_000 * 512 * 4
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(50, 32)))  # clustered, as embeddings are
    x = unit(centres[rng.integers(0, 50, 6000)] + 0.3 * rng.normal(size=(6000, 32)))
    write_index(tmp_path / "ix", x, [{"id": i, "text": str(i)} for i in range(len(x))],
                {"dim": 32, "fingerprint": "f" * 16, "kind": "text", "model": "test"})
    info = build_faiss(open_index(tmp_path / "ix"), "auto", sample=200, exact_max_bytes=100_000)
    assert info["index_type"] == "ivfpq" and info["chosen"].startswith("auto") and info["pq_bytes_per_vector"] == 4
    assert 0.3 < info["recall_at_10"] < 1.0, info  # compressed codes: approximate, and reported as such
    info = build_faiss(open_index(tmp_path / "ix"), "auto", sample=200)
    assert info["index_type"] == "hnsw" and info["recall_at_10"] > 0.9


def test_weights_fingerprint_is_cached_and_follows_the_files(tmp_path):
    import hashlib
    import os

    from convirt_cli.torchfree.files import FINGERPRINT_CACHE, weights_fingerprint

    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "model.safetensors").write_bytes(b"abc")
    (tmp_path / "heads.safetensors").write_bytes(b"xy")
    (tmp_path / "notes.bin").write_bytes(b"not a tower file")
    h = hashlib.sha256(b"heads.safetensors\0xyimage/model.safetensors\0abc").hexdigest()[:16]
    assert weights_fingerprint(tmp_path) == h and (tmp_path / FINGERPRINT_CACHE).is_file()
    cached = json.loads((tmp_path / FINGERPRINT_CACHE).read_text())
    (tmp_path / FINGERPRINT_CACHE).write_text(json.dumps(cached | {"fingerprint": "from-the-cache"}))
    assert weights_fingerprint(tmp_path) == "from-the-cache"  # unchanged files: not hashed again
    (tmp_path / "heads.safetensors").write_bytes(b"xz")  # same size, new contents and mtime
    st = (tmp_path / "heads.safetensors").stat()
    os.utime(tmp_path / "heads.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert weights_fingerprint(tmp_path) == hashlib.sha256(b"heads.safetensors\0xzimage/model.safetensors\0abc").hexdigest()[:16]
