"""WebDataset shards: `convirt shard` then `convirt pretrain SHARDS` sees as many pairs per epoch as the table
does; skips are counted at shard time; a corrupt member is a counted bad image; torchrun streams and resumes."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile

import pytest
from conftest import COVID, EXAMPLES
from PIL import Image
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torchfree.errors import ConvirtError

runner = CliRunner()


def _pretrain(data, out, *extra):
    r = runner.invoke(app, ["pretrain", str(data), "--epochs", "1", "--batch-size", "32", "--image-size", "32",
                            "--min-steps", "0", "--out", str(out), "--runs-dir", str(out.parent / "runs"),
                            "--device", "cpu", *extra])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(("data", "text_col"), [(EXAMPLES, "text"), (COVID, "report")])
def test_shards_round_trip_same_pairs_per_epoch(tmp_path, data, text_col):
    r = runner.invoke(app, ["shard", str(data), "--out", str(tmp_path / "shards"), "--per-shard", "100",
                            "--max-side", "96", "--text-col", text_col])
    assert r.exit_code == 0, r.output + repr(r.exception)
    meta = json.loads((tmp_path / "shards" / "shards.json").read_text())
    from_csv = _pretrain(data, tmp_path / "csv", "--text-col", text_col)
    from_shards = _pretrain(tmp_path / "shards", tmp_path / "sh")
    assert meta["splits"]["train"]["count"] == from_csv["train_pairs"] == from_shards["train_pairs"]
    assert meta["splits"]["val"]["count"] == from_csv["val_pairs"] == from_shards["val_pairs"]
    assert from_csv["total_steps"] == from_shards["total_steps"] > 0
    assert sum(meta["skipped"].values()) == sum(from_csv["data"]["skipped"].values())  # counted the same way
    with tarfile.open(tmp_path / "shards" / meta["splits"]["train"]["shards"][0]) as tar:
        images = [m for m in tar if m.name.endswith((".png", ".jpg"))]
        with Image.open(tar.extractfile(images[0])) as im:
            assert max(im.size) <= 96  # downscaled once, at shard time


def test_corrupt_member_is_a_counted_bad_image(tmp_path):
    from convirt_cli.torch.data.dataset import Collate
    from convirt_cli.torch.data.shards import ShardDataset, open_shards

    r = runner.invoke(app, ["shard", str(EXAMPLES), "--out", str(tmp_path / "s"), "--per-shard", "1000"])
    assert r.exit_code == 0, r.output
    val = tmp_path / "s" / "val-000000.tar"
    with tarfile.open(val) as src:
        members = [(m, src.extractfile(m).read()) for m in src]
    with tarfile.open(val, "w") as dst:
        first_png = next(m.name for m, _ in members if m.name.endswith(".png"))
        for m, data in members:
            if m.name == first_png:
                data = b"\x89PNG\r\n\x1a\n" + b"garbage" * 20
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    sets = open_shards(tmp_path / "s")
    ds = ShardDataset(sets["val"], 32, train=False)
    batch = Collate(None)(list(ds))
    assert len(batch["bad"]) == 1 and len(batch["index"]) == sets["val"].count - 1
    r = runner.invoke(app, ["pretrain", str(tmp_path / "nope" / "{000000..000003}.tar")])
    assert isinstance(r.exception, ConvirtError) and "no such shard" in str(r.exception)
    r = runner.invoke(app, ["pretrain", str(tmp_path / "s"), "--sections", "impression"])
    assert isinstance(r.exception, ConvirtError) and "(whole reports); pass --sections to `convirt shard`" in str(
        r.exception)


def test_shards_keep_the_report_sections_asked_for(tmp_path):
    """`convirt shard --sections impression`: the shards hold the impression alone; the example reports without one
    (164 of 600; the rest write it 'Impression:' or 'IMPRESSION:') are counted skips, and shards.json says which sections its texts are."""
    r = runner.invoke(app, ["shard", str(EXAMPLES), "--out", str(tmp_path / "s"), "--sections", "Impression",
                            "--max-side", "32"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    meta = json.loads((tmp_path / "s" / "shards.json").read_text())
    assert meta["sections"] == ["impression"] and meta["skipped"] == {"no impression section": 164}
    texts = [v.decode() for k, v in _members(tmp_path / "s").items() if k.endswith(".txt")]
    r = runner.invoke(app, ["shard", str(EXAMPLES), "--out", str(tmp_path / "f"), "--where", "sex=F", "--max-side",
                            "32"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    meta = json.loads((tmp_path / "f" / "shards.json").read_text())
    assert meta["where"] == ["sex=F"] and list(meta["skipped"]) == ["--where sex: M"]
    assert 0 < meta["skipped"]["--where sex: M"] < 600
    r = runner.invoke(app, ["pretrain", str(tmp_path / "f"), "--where", "sex=M"])
    assert isinstance(r.exception, ConvirtError) and "(--where sex=F); pass --where to `convirt shard`" in str(r.exception)
    r = runner.invoke(app, ["pretrain", str(tmp_path / "f"), "--join", str(tmp_path / "labels.csv")])
    assert isinstance(r.exception, ConvirtError) and "(no joined table); pass --join to `convirt shard`" in str(
        r.exception)
    r = runner.invoke(app, ["pretrain", str(tmp_path / "f"), "--window", "minmax"])  # the pixels were windowed then
    assert isinstance(r.exception, ConvirtError) and str(r.exception).startswith(
        "--window minmax: these shards were windowed with auto when written"), r.output
    assert texts and all("impression" not in t.lower() and t.endswith(".") for t in texts), texts[:3]


def _members(folder):
    out = {}
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            out |= {f"{tar_path.name}/{m.name}": tar.extractfile(m).read() for m in tar}
    return out


def test_parallel_shard_writing_gives_the_same_shards(tmp_path):
    """--workers 2 (decoding and encoding in worker processes) writes the very samples, in the same shards and
    order, as one process, and counts an undecodable image the same way."""
    import csv
    import shutil

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    with open(EXAMPLES / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:40]
    for r in rows:
        shutil.copy(EXAMPLES / r["image"], data / r["image"])
    (data / rows[7]["image"]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")  # passes the header check only
    with open(data / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    metas = []
    for workers in (1, 2):
        r = runner.invoke(app, ["shard", str(data), "--out", str(tmp_path / f"w{workers}"), "--per-shard", "8",
                                "--max-side", "64", "--workers", str(workers)])
        assert r.exit_code == 0, r.output + repr(r.exception)
        metas.append(json.loads((tmp_path / f"w{workers}" / "shards.json").read_text()))
    assert metas[0] == metas[1] and sum(metas[0]["skipped"].values()) == 1
    one, two = _members(tmp_path / "w1"), _members(tmp_path / "w2")
    samples = sum(v["count"] for v in metas[0]["splits"].values())  # train + val (the table's test rows stay out)
    assert samples >= 30 and len(one) == 3 * samples and one == two  # png, txt, json per sample, byte for byte


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_torchrun_streams_shards_and_resumes(tmp_path):
    r = runner.invoke(app, ["shard", str(EXAMPLES), "--out", str(tmp_path / "s"), "--per-shard", "100"])
    assert r.exit_code == 0, r.output
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
            str(free_port()), "-m", "convirt_cli", "pretrain"]
    common = ["--batch-size", "8", "--image-size", "32", "--out", str(tmp_path / "run"), "--runs-dir",
              str(tmp_path / "runs"), "--device", "cpu", "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*base, str(tmp_path / "s"), "--max-steps", "3", *common], capture_output=True, text=True,
                       timeout=300, env=env, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    p = subprocess.run([*base, "--resume", "--max-steps", "5", *common], capture_output=True, text=True,
                       timeout=300, env=env, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert steps == [1, 2, 3, 4, 5]
