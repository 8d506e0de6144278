"""Run directories: runs/<name>/ holds config.json, model.json + towers, metrics.jsonl, checkpoints/.

`runs/latest` names the last finished run so later commands need not be told.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import atomic_write_text
from convirt_cli.torchfree.registry import is_run_dir

LATEST = "latest"


def new_run_name(model: str) -> str:
    return f"{Path(model).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def set_latest(runs_dir: Path, run: Path) -> None:
    atomic_write_text(runs_dir / LATEST, str(run.resolve()) + "\n")


def latest_run(runs_dir: Path) -> Path | None:
    pointer = runs_dir / LATEST
    if not pointer.is_file():
        return None
    path = Path(pointer.read_text().strip())
    return path if path.is_dir() else None


def resolve_run(spec: str | Path | None, runs_dir: Path = Path("runs")) -> Path:
    """A run directory given, or the latest finished one."""
    if spec is not None:
        path = Path(spec)
        if not is_run_dir(path):
            raise ConvirtError(f"{path}: not a run directory (no model.json); pass a folder made by `convirt pretrain`")
        return path
    path = latest_run(runs_dir)
    if path is None:
        raise ConvirtError(f"no finished run in {runs_dir}/: run `convirt pretrain DATA` first or pass a run directory")
    return path


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
