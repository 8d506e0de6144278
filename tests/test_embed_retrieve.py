"""embed -> retrieve end to end (CliRunner and a real subprocess), index files, ids, --append, refusals."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.serve.index import open_index

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def images(covid_csv, tmp_path_factory) -> Path:
    """A 12-row table of covid-cxr images with one unreadable file in the middle (row id 5)."""
    tmp = tmp_path_factory.mktemp("imgs")
    with covid_csv.open() as f:
        rows = list(csv.DictReader(f))[:12]
    bad = tmp / "broken.png"
    bad.write_bytes(b"not a png")
    for r in rows:
        r["image"] = str(covid_csv.parent / r["image"])
    rows[5]["image"] = str(bad)
    with (tmp / "pairs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return tmp / "pairs.csv"


@pytest.fixture(scope="module")
def index(images, tiny_export, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    out = runs.parent / "index"
    res = invoke("embed", images, "--model", tiny_export, "--out", out, "--runs-dir", runs, "--text-col", "report")
    assert res.exit_code == 0, res.output
    return out


def test_index_files_and_skipped_image_keeps_ids(index, images, tiny_export):
    idx = open_index(index)
    meta = json.loads((index / "index.json").read_text())
    assert meta["count"] == 11 and meta["kind"] == "image" and meta["backend"] == "onnx"
    assert meta["fingerprint"] == json.loads((tiny_export / "manifest.json").read_text())["fingerprint"]
    assert [s["id"] for s in meta["skipped"]] == [5] and "broken.png" in meta["skipped"][0]["path"]
    assert [it["id"] for it in idx.items] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert idx.items[5]["source"] == "pairs.csv:8"  # row 8 of the CSV is id 6: nothing shifted
    emb = np.load(index / "embeddings.npy", mmap_mode="r")
    assert emb.dtype == np.float32 and emb.shape == (11, meta["dim"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_torch_backend_gives_the_same_embeddings(images, tiny_export, tiny_run, tmp_path, index):
    res = invoke("embed", images, "--model", tiny_run, "--backend", "torch", "--out", tmp_path / "t",
                 "--runs-dir", tmp_path)
    assert res.exit_code == 0, res.output
    t = open_index(tmp_path / "t")
    assert t.meta["backend"] == "torch" and t.meta["fingerprint"] == open_index(index).meta["fingerprint"]
    np.testing.assert_allclose(np.asarray(t.embeddings), np.asarray(open_index(index).embeddings), atol=1e-4)


def test_image_query_finds_itself_and_formats(index, images):
    with images.open() as f:
        first = next(csv.DictReader(f))["image"]
    res = invoke("retrieve", "--image", first, "--index", index, "-k", "3", "--format", "jsonl")
    assert res.exit_code == 0, res.output
    hits = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(hits) == 3 and hits[0]["id"] == 0 and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    paths = invoke("retrieve", "--image", first, "--index", index, "-k", "3", "--format", "paths").stdout.splitlines()
    assert paths == [h["path"] for h in hits]


def test_text_queries_many_at_once_match_manual_ranking(index, tiny_export):
    """Two text queries from stdin in one call equal ranking by hand (encoder + numpy argsort)."""
    from convirt_cli.torchfree.serve.encoder import OnnxEncoder

    qs = ["bilateral ground glass opacities", "normal chest"]
    res = invoke("retrieve", "--queries", "-", "--index", index, "-k", "4", "--format", "csv", input="\n".join(qs) + "\n")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(res.stdout.splitlines()))
    idx = open_index(index)
    q = OnnxEncoder(tiny_export, device="cpu").encode_texts(qs)
    expect = np.argsort(-(q @ np.asarray(idx.embeddings).T), axis=1, kind="stable")[:, :4]
    for i, text in enumerate(qs):
        got = [int(r["id"]) for r in rows if r["query"] == text]
        assert got == [idx.items[j]["id"] for j in expect[i]]


def test_latest_index_is_the_default(index, images, tmp_path):
    runs = next(p for p in index.parent.iterdir() if p.name.startswith("runs"))
    assert (runs / "latest-index").read_text().strip() == str(index.resolve())
    res = invoke("retrieve", "--query", "opacity", "--runs-dir", runs, "-k", "2", "--format", "paths")
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 2
    res = invoke("retrieve", "--query", "opacity", "--runs-dir", tmp_path)
    assert res.exit_code != 0 and "latest-index" in str(res.exception)


def test_append_extends_ids_and_rows(index, images, tiny_export, tmp_path):
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    lines = tmp_path / "more.txt"
    with images.open() as f:
        paths = [r["image"] for r in csv.DictReader(f)][:2]
    lines.write_text("\n".join(paths) + "\n")
    before = np.asarray(open_index(copy).embeddings).copy()
    res = invoke("embed", lines, "--model", tiny_export, "--out", copy, "--append", "--runs-dir", tmp_path)
    assert res.exit_code == 0, res.output
    idx = open_index(copy)
    assert idx.count == 13 and [it["id"] for it in idx.items[-2:]] == [12, 13]
    np.testing.assert_array_equal(np.asarray(idx.embeddings[:11]), before)
    np.testing.assert_allclose(np.asarray(idx.embeddings[11:]), before[:2], atol=1e-6)  # same images again
    res = invoke("embed", lines, "--model", tiny_export, "--out", copy, "--append", "--kind", "text",
                 "--runs-dir", tmp_path)
    assert res.exit_code != 0 and "holds image embeddings" in str(res.exception)


def test_crash_during_append_leaves_old_index(index, images, tiny_export, tmp_path, monkeypatch):
    import shutil

    import convirt_cli.torchfree.serve.index as fi

    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    before = (copy / "index.json").read_text()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fi, "write_json", boom)  # dies just before the commit point
    from convirt_cli.torchfree.serve.embed import embed_items
    from convirt_cli.torchfree.serve.encoder import OnnxEncoder

    with pytest.raises(RuntimeError):
        embed_items(OnnxEncoder(tiny_export), "text", [{"text": "x", "source": "s"}], copy, append=False)
    with pytest.raises(RuntimeError):
        embed_items(OnnxEncoder(tiny_export), "image", open_index(copy).items[:1], copy, append=True)
    assert (copy / "index.json").read_text() == before
    assert open_index(copy).count == 11 and not [p for p in copy.parent.iterdir() if p.name.startswith(".idx")]


def test_refuses_index_of_another_model(index, tiny_export, tmp_path):
    other = tmp_path / "other"
    import shutil

    shutil.copytree(tiny_export, other)
    man = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(man | {"fingerprint": "0123456789abcdef"}))
    res = invoke("retrieve", "--query", "x", "--index", index, "--model", other)
    assert res.exit_code != 0 and isinstance(res.exception, ConvirtError)
    assert "built by another model" in str(res.exception)


def test_html_gallery_file(index, tmp_path):
    page = tmp_path / "g.html"
    res = invoke("retrieve", "--query", "effusion", "--index", index, "-k", "3", "--format", "html", "--out", page)
    assert res.exit_code == 0 and res.stdout == ""
    html = page.read_text()
    assert html.count("data:image/jpeg;base64,") == 3 and "effusion" in html


def test_text_index_from_text_file(tiny_export, tmp_path):
    f = tmp_path / "reports.txt"
    f.write_text("left pleural effusion\n\nno acute disease\nright lower lobe consolidation\n")
    res = invoke("embed", f, "--model", tiny_export, "--out", tmp_path / "t", "--runs-dir", tmp_path)
    assert res.exit_code == 0, res.output
    idx = open_index(tmp_path / "t")
    assert idx.meta["kind"] == "text" and idx.items[0]["text"] == "left pleural effusion"
    assert [it["source"] for it in idx.items] == ["reports.txt:1", "reports.txt:3", "reports.txt:4"]
    res = invoke("retrieve", "--query", "no acute disease", "--index", tmp_path / "t", "-k", "1", "--format", "paths")
    assert res.stdout == "no acute disease\n"


def test_retrieve_subprocess_never_imports_torch(index):
    """A real cold process: `python -m convirt_cli retrieve`, then report which heavy modules were loaded."""
    code = ("import runpy, sys\n"
            "sys.argv = ['convirt'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('convirt_cli', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'timm', 'torchvision') if m in sys.modules),"
            " file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, "retrieve", "--query", "opacity", "--index", str(index), "-k", "2",
                           "--format", "jsonl"], capture_output=True, text=True, cwd=ROOT,
                          env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr
    assert len([json.loads(line) for line in proc.stdout.splitlines()]) == 2
    assert "Error" not in proc.stderr and "\x1b[31m" not in proc.stderr  # no red provider noise


def test_torch_backend_subprocess_prints_only_our_lines(images, tiny_run, tmp_path):
    """transformers' own "Loading weights" tqdm bar must not interleave with the command's stderr."""
    proc = subprocess.run([sys.executable, "-m", "convirt_cli", "embed", str(images), "--model", str(tiny_run),
                           "--backend", "torch", "--out", str(tmp_path / "t")], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Loading weights" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr


def test_retrieve_errors_are_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "convirt_cli", "retrieve", "--query", "x", "--index", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_faiss_index_recall(index, tmp_path):
    pytest.importorskip("faiss")
    res = invoke("index", "build", index, "--faiss", "--index-type", "flat")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["recall_at_10"] == 1.0 and (index / "faiss.index").is_file()  # flat is exact
    assert info["index_type"] == "flat" and "now --index-type" not in res.stderr
    old = invoke("index", "build", index, "--faiss", "--kind", "flat")  # the old spelling: one note, same index
    assert old.exit_code == 0 and "`index build --kind` is now --index-type" in old.stderr
    assert json.loads(old.stdout)["index_type"] == "flat"
    a = invoke("retrieve", "--query", "opacity", "--index", index, "-k", "5", "--format", "jsonl").stdout
    b = invoke("retrieve", "--query", "opacity", "--index", index, "-k", "5", "--format", "jsonl", "--exact").stdout
    assert [json.loads(x)["id"] for x in a.splitlines()] == [json.loads(x)["id"] for x in b.splitlines()]
    (index / "faiss.index").unlink()


@pytest.mark.parametrize(("damage", "names"), [
    ("truncate_npy", "embeddings.npy"),
    ("garbage_npy", "embeddings.npy"),
    ("nan_row", "embeddings.npy"),
    ("broken_json", "index.json"),
    ("cut_items", "items.jsonl"),
    ("bad_item_line", "items.jsonl:3"),
])
def test_damaged_index_files_are_one_line(index, tiny_export, tmp_path, damage, names):
    """A damaged index never gives a traceback or a "score": NaN: one line naming the file and how to rebuild."""
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    npy = copy / "embeddings.npy"
    header = len(npy.read_bytes()) - 11 * 64 * 4  # 11 rows of d=64 float32 after the .npy header
    if damage == "truncate_npy":
        npy.write_bytes(npy.read_bytes()[:-100])
    elif damage == "garbage_npy":  # bytes that decode to huge finite floats in row 2
        data = bytearray(npy.read_bytes())
        data[header + 2 * 256: header + 2 * 256 + 64] = b"\x7e" * 64
        npy.write_bytes(bytes(data))
    elif damage == "nan_row":
        data = bytearray(npy.read_bytes())
        data[header + 4 * 256: header + 4 * 256 + 8] = np.array([np.nan, np.nan], np.float32).tobytes()
        npy.write_bytes(bytes(data))
    elif damage == "broken_json":
        (copy / "index.json").write_text('{"count": 11, "dim": ')
    elif damage == "cut_items":
        text = (copy / "items.jsonl").read_text()
        (copy / "items.jsonl").write_text(text[: len(text) - 30])
    elif damage == "bad_item_line":  # every hit's line is read: damage one that a query returns
        lines = (copy / "items.jsonl").read_text().splitlines()
        lines[2] = lines[2][:10] + "#" * (len(lines[2]) - 10)
        (copy / "items.jsonl").write_text("\n".join(lines) + "\n")
    res = invoke("retrieve", "--query", "bilateral opacities", "--index", copy, "-k", "11", "--format", "jsonl")
    assert res.exit_code != 0 and isinstance(res.exception, ConvirtError), res.output
    msg = str(res.exception)
    assert names in msg and "convirt embed" in msg and "\n" not in msg, msg
    assert "NaN" not in res.stdout


def test_non_finite_embeddings_are_skipped_and_named(tmp_path):
    from convirt_cli.torchfree.serve.embed import embed_items

    class NaNOnSecond:
        fingerprint, dim, backend, path = "f" * 16, 2, "onnx", tmp_path

        def encode_texts(self, texts, batch_size=64, on_progress=None):
            out = np.tile(np.array([[0.6, 0.8]], np.float32), (len(texts), 1))
            out[1] = np.nan
            return out

    meta = embed_items(NaNOnSecond(), "text", [{"text": t, "source": f"s:{i}"} for i, t in enumerate("abc")],
                       tmp_path / "idx")
    assert meta["count"] == 2 and [s["reason"] for s in meta["skipped_now"]] == ["non-finite embedding"]
    assert np.isfinite(np.load(tmp_path / "idx" / "embeddings.npy")).all()


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1", "utf-16", "utf-8-sig"])
def test_tables_in_hospital_encodings_are_read(tmp_path, covid_csv, encoding):
    """Windows / Excel exports: the text keeps its accents, no UnicodeDecodeError."""
    from convirt_cli.torchfree.data.readers import read_rows

    img = covid_csv.parent / "images" / min(p.name for p in (covid_csv.parent / "images").iterdir())
    table = tmp_path / "t.csv"
    table.write_bytes(f'image,text\n{img},"Épanchement pleural gauche, côté opéré"\n'.encode(encoding))
    rows = read_rows(table)
    assert rows[0].text == "Épanchement pleural gauche, côté opéré"
    assert read_rows(table, encoding=encoding)[0].text == rows[0].text
    if encoding in ("cp1252", "latin-1"):  # told the wrong encoding: one line saying which flag to pass
        with pytest.raises(ConvirtError, match=r"t.csv: not utf-8 \(byte \d+\); pass the file's --encoding"):
            read_rows(table, encoding="utf-8")
