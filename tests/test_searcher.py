"""The Searcher (torchfree/serve/searcher.py), the library service behind `convirt retrieve` and `convirt serve`:
every kind of query against a ranking done here by hand (numpy argsort over the index's own rows), paging, the
`where` filter against data/where.py's row rule, one-line refusals, and refresh() after `embed --append`."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import table_with_absolute_paths
from PIL import Image
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torchfree.data.where import excluded, parse_where
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.serve.index import open_index, write_index
from convirt_cli.torchfree.serve.searcher import OpenIndex, Query, Searcher


@pytest.fixture(scope="module")
def table(covid_csv, tmp_path_factory):
    return table_with_absolute_paths(covid_csv, tmp_path_factory.mktemp("searcher") / "t.csv", limit=16)


@pytest.fixture(scope="module")
def index(table, tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("searcher_index") / "idx"
    r = CliRunner().invoke(app, ["embed", str(table), "--model", str(tiny_export), "--out", str(out), "--columns",
                                 "view,sex", "--runs-dir", str(out.parent / "runs")])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def searcher(index):
    return Searcher(index, backend="onnx", device="cpu")


def by_hand(idx, q: np.ndarray, keep=None, leave_out: int = -1) -> list[int]:
    """Item ids by cosine, ties to the lower row: a stable argsort over all rows, the filtered ones dropped."""
    s = np.asarray(idx.embeddings) @ q
    order = np.argsort(-s, kind="stable")
    return [idx.items[int(r)]["id"] for r in order if r != leave_out and (keep is None or keep[r])]


def ids(result: dict) -> list[int]:
    return [h["item"]["id"] for h in result["hits"]]


def test_text_query_ranks_as_by_hand(searcher):
    idx = searcher.index()
    q = searcher.encoder.encode_texts(["bilateral ground glass opacities"])[0]
    (res,) = searcher.search(Query(text="bilateral ground glass opacities"), k=5)
    assert ids(res) == by_hand(idx, q)[:5] and [h["rank"] for h in res["hits"]] == [1, 2, 3, 4, 5]
    assert res["query"] == {"text": "bilateral ground glass opacities"}


def test_image_as_path_bytes_or_pixels_gives_the_same_hits(searcher, table):
    idx = searcher.index()
    path = idx.items[3]["path"]
    with Image.open(path) as im:
        pixels = np.asarray(im)
    by_path, by_bytes, by_pixels = searcher.search(
        [Query(image=path), Query(image=Path(path).read_bytes(), name="upload.png"), Query(image=pixels)], k=4)
    assert by_path["hits"][0]["item"]["id"] == idx.items[3]["id"]  # an indexed image finds itself first
    assert by_path["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    for other in (by_bytes, by_pixels):
        assert ids(other) == ids(by_path)
        np.testing.assert_allclose([h["score"] for h in other["hits"]], [h["score"] for h in by_path["hits"]],
                                   atol=1e-5)
    assert by_bytes["query"] == {"image": "upload.png"} and by_pixels["query"]["image"].startswith("pixels ")


def test_more_like_an_item_leaves_the_item_out(searcher):
    """`like`: the item's own row is the query and never one of its hits (here: the rest, ranked by hand)."""
    idx = searcher.index()
    item = idx.items[5]
    (res,) = searcher.search(Query(like=item["id"]), k=6)
    assert item["id"] not in ids(res)
    assert ids(res) == by_hand(idx, np.asarray(idx.embeddings[5]), leave_out=5)[:6]
    assert searcher.item(item["id"]) == item


def test_pages_equal_one_big_k(searcher):
    q = [Query(text="right lower lobe consolidation"), Query(like=searcher.index().items[0]["id"])]
    whole = searcher.search(q, k=9)
    pages = [searcher.search(q, k=3, offset=o) for o in (0, 3, 6)]
    for i in range(len(q)):
        joined = [h for page in pages for h in page[i]["hits"]]
        assert [(h["rank"], h["item"]["id"], h["score"]) for h in joined] == \
            [(h["rank"], h["item"]["id"], h["score"]) for h in whole[i]["hits"]]
    assert searcher.search(q[0], k=5, offset=100)[0]["hits"] == []


@pytest.mark.parametrize("where", [["view=PA"], ["view!=PA"], ["view=AP,PA", "sex=F"], ["sex=f;view=ap"]])
def test_where_keeps_the_rows_the_data_layer_would(searcher, where):
    """The filter keeps exactly the items data/where.py's `excluded` keeps, then ranks them as by hand."""
    idx = searcher.index()
    keep = np.array([excluded(it["columns"], parse_where(where)) is None for it in idx.items])
    assert 0 < keep.sum() < idx.count  # a filter that keeps some and drops some
    q = searcher.encoder.encode_texts(["effusion"])[0]
    (res,) = searcher.search(Query(text="effusion"), k=idx.count, where=where)
    assert ids(res) == by_hand(idx, q, keep=keep)


def test_stored_columns_are_only_those_named(index):
    items = open_index(index).items
    assert set(items[0]["columns"]) == {"view", "sex"}  # the table's patientid never reaches the index
    assert "patientid" not in (index / "items.jsonl").read_text()


@pytest.mark.parametrize(("call", "message"), [
    (lambda s: s.search(Query(like=10_000)), "no item with id 10000"),
    (lambda s: s.item(-3), "no item with id -3"),
    (lambda s: s.search(Query(text="  ")), "empty text query"),
    (lambda s: s.search(Query()), "a query is one text, one image or one item id (got none)"),
    (lambda s: s.search(Query(text="a", like=1)), "(got text and like)"),
    (lambda s: s.search([]), "no query"),
    (lambda s: s.search(Query(text="a"), where=["view"]), "'view' is not COLUMN=VALUE"),
    (lambda s: s.search(Query(text="a"), where=["finding=COVID-19"]), "no column 'finding' to filter on"),
    (lambda s: s.search(Query(text="a"), k=0), "at least 1"),
    (lambda s: s.search(Query(text="a"), offset=-1), "offset -1"),
    (lambda s: s.search(Query(image=b"not an image")), "query image 12 bytes: cannot read it"),
    (lambda s: s.search(Query(text="a"), index="nope"), "no index named 'nope'"),
])
def test_mistakes_are_one_line(searcher, call, message):
    with pytest.raises(ConvirtError) as e:
        call(searcher)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_refuses_an_index_of_another_model(index, tiny_export, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_export, other)
    man = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(man | {"fingerprint": "0123456789abcdef"}))
    with pytest.raises(ConvirtError, match="built by another model"):
        Searcher(index, model=other)


def test_refresh_sees_appended_items_and_calls_in_flight_finish(index, table, tiny_export, tmp_path):
    """embed --append while searches run in another thread: none fails; after refresh() the new items are found."""
    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    s = Searcher(copy, backend="onnx", device="cpu")
    before = s.index().count
    assert s.refresh() == []  # nothing changed: nothing reopened
    errors, stop = [], threading.Event()

    def keep_searching():
        while not stop.is_set():
            try:
                s.refresh()
                s.search(Query(like=0), k=before)
            except Exception as e:  # noqa: BLE001 - collected and failed on below
                errors.append(e)

    t = threading.Thread(target=keep_searching)
    t.start()
    try:
        lines = tmp_path / "more.txt"
        lines.write_text("\n".join(it["path"] for it in s.index().items[:3]) + "\n")
        r = CliRunner().invoke(app, ["embed", str(lines), "--model", str(tiny_export), "--out", str(copy), "--append",
                                     "--runs-dir", str(tmp_path / "runs")])
        assert r.exit_code == 0, r.output
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    s.refresh()
    idx = s.index()
    assert idx.count == before + 3
    new_id = idx.items[before]["id"]
    assert s.item(new_id)["path"] == idx.items[0]["path"]
    (res,) = s.search(Query(like=idx.items[0]["id"]), k=1)  # the same image appended: now its nearest item
    assert ids(res) == [new_id] and res["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_where_mask_matches_the_row_rule_on_random_columns(tmp_path):
    """No model needed: the vectorised mask (OpenIndex.allowed) equals data/where.py's per-row rule."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    items = [{"id": i, "text": str(i), "columns": {"view": str(rng.choice(["PA", "ap", " AP ", ""])),
                                                    "sex": str(rng.choice(["M", "F"]))}} for i in range(200)]
    items[7]["columns"].pop("sex")  # a row without the column counts as blank
    write_index(tmp_path / "ix", x, items, {"dim": 4, "fingerprint": "f" * 16, "kind": "text", "model": "test"})
    entry = OpenIndex(tmp_path / "ix")
    for where in (["view=ap"], ["view!=PA,ap"], ["view=pa", "sex!=m"], ["sex!=F"]):
        want = [excluded(it["columns"], parse_where(where)) is None for it in items]
        assert entry.allowed(where).tolist() == want, where
