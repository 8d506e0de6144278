"""Shared fixtures: real data from ../shared/data by path, tiny runs trained once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it: tests never reach the hub
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
COVID = SHARED / "covid-cxr" / "manifest.csv"
PNEUMONIA = SHARED / "pneumoniamnist" / "manifest.csv"
EXAMPLES = ROOT / "examples" / "data"


@pytest.fixture(scope="session")
def covid_csv() -> Path:
    if not COVID.is_file():
        pytest.fail(f"{COVID} missing: the shared data sets must sit beside the project")
    return COVID


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, covid_csv) -> Path:
    """`tiny` pretrained for a few steps on covid-cxr (flags only): a complete run directory."""
    from convirt_cli.torch.train.loop import pretrain
    from convirt_cli.torchfree.config import PretrainConfig

    tmp = tmp_path_factory.mktemp("tiny_run")
    cfg = PretrainConfig(data=covid_csv, text_col="report", max_steps=4, batch_size=16, out=tmp / "run",
                         runs_dir=tmp / "runs", device="cpu", plot=False, val_fraction=0.15)
    return pretrain(cfg)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_run) -> Path:
    """tiny_run exported to ONNX (fp32), parity-checked by the export itself."""
    from convirt_cli.torch.export import export_onnx

    folder, _ = export_onnx(tiny_run, tmp_path_factory.mktemp("tiny_export") / "onnx")
    return folder


@pytest.fixture(scope="session")
def example_run(tmp_path_factory) -> Path:
    """`convirt pretrain examples/data`: no flags but the data path, through the installed CLI in an empty folder (no
    convirt.toml, no CONVIRT_* variables): the `tiny` preset's own recipe on the train split (~1.5 min on 2 cores)."""
    import subprocess
    import sys

    pairs = EXAMPLES / "pairs.csv"
    if not pairs.is_file():
        pytest.fail(f"{pairs} missing: run examples/make_example_data.py")
    cwd = tmp_path_factory.mktemp("example_run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVIRT_")}
    p = subprocess.run([sys.executable, "-m", "convirt_cli", "pretrain", str(EXAMPLES)], cwd=cwd, env=env,
                       capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return Path((cwd / "runs" / "latest").read_text().strip())


@pytest.fixture(scope="session")
def example_heldout(tmp_path_factory) -> Path:
    """The val + test rows of examples/data (never trained on) as a CSV with absolute image paths."""
    return table_with_absolute_paths(EXAMPLES / "pairs.csv", tmp_path_factory.mktemp("heldout") / "heldout.csv",
                                     lambda r: r["split"] != "train")


def table_with_absolute_paths(src: Path, dest: Path, keep=lambda r: True, limit: int | None = None) -> Path:
    """The rows of table `src` that `keep` accepts (the first `limit`), image paths made absolute, written to dest."""
    import csv

    with src.open() as f:
        rows = [r for r in csv.DictReader(f) if keep(r)][:limit]
    for r in rows:
        r["image"] = str(src.parent / r["image"])
    with dest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dest


@pytest.fixture(scope="session")
def dino_run(tmp_path_factory) -> Path:
    """`convirt pretrain examples/data --objective dino`: dino-tiny with its own recipe, on the train split."""
    from convirt_cli.torch.train.loop import pretrain
    from convirt_cli.torchfree.config import PretrainConfig

    tmp = tmp_path_factory.mktemp("dino_run")
    return pretrain(PretrainConfig(data=EXAMPLES, objective="dino", out=tmp / "run", runs_dir=tmp / "runs",
                                   device="cpu", plot=False))


@pytest.fixture(scope="session")
def search_indexes(covid_csv, tiny_export, tmp_path_factory) -> dict[str, Path]:
    """40 covid-cxr rows embedded by tiny_export twice: `images` (view and sex kept) and `reports` (their texts)."""
    from typer.testing import CliRunner

    from convirt_cli.cli.main import app

    tmp = tmp_path_factory.mktemp("search_indexes")
    table = table_with_absolute_paths(covid_csv, tmp / "t.csv", limit=40)
    out = {"images": tmp / "images", "reports": tmp / "reports"}
    for name, extra in (("images", []), ("reports", ["--kind", "text", "--text-col", "report"])):
        r = CliRunner().invoke(app, ["embed", str(table), "--model", str(tiny_export), "--out", str(out[name]),
                                     "--columns", "view,sex", "--runs-dir", str(tmp / "runs"), *extra])
        assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def search_server(search_indexes, tiny_export, tmp_path_factory):
    """`convirt serve images=... reports=...` on a free port of 127.0.0.1, uploads capped at 1 MiB; stopped with
    SIGTERM at the end, which must exit 0. The images index is a copy: tests may append to it."""
    import shutil

    from serving import start

    tmp = tmp_path_factory.mktemp("search_server")
    images = tmp / "images"
    shutil.copytree(search_indexes["images"], images)
    served = start([f"images={images}", f"reports={search_indexes['reports']}", "--model", tiny_export,
                    "--max-upload-mb", "1"], tmp / "serve.log")
    served.images = images
    yield served
    assert served.stop() == 0, served.log_text()[-2000:]
