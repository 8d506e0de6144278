"""Shared fixtures: real data from ../shared/data by path, tiny runs trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    from convirt_cli.config import PretrainConfig
    from convirt_cli.train.loop import pretrain

    tmp = tmp_path_factory.mktemp("tiny_run")
    cfg = PretrainConfig(data=covid_csv, text_col="report", max_steps=4, batch_size=16, out=tmp / "run",
                         runs_dir=tmp / "runs", device="cpu", plot=False, val_fraction=0.15)
    return pretrain(cfg)
