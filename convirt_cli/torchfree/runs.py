"""Run directories: runs/<name>/ holds config.json, model.json + towers, metrics.jsonl, checkpoints/, summary.json.

`runs/latest` names the last finished run so later commands need not be told. summary.json says whether a
run finished (`status`: running | interrupted | complete) and whether it learnt (`learning`), so that
`export` and `embed` can say so when given a run that did not.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import atomic_write_text, read_json, write_json, writing

LATEST = "latest"
SUMMARY = "summary.json"
RUN_MODEL_FILE = "model.json"  # a run's towers are described here; its presence makes a folder a run


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / RUN_MODEL_FILE).is_file()


def new_run_name(model: str, when: float | None = None) -> str:
    return f"{Path(model).stem}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}"


def set_latest(runs_dir: Path, run: Path) -> None:
    atomic_write_text(runs_dir / LATEST, str(run.resolve()) + "\n")


def latest_run(runs_dir: Path) -> Path | None:
    pointer = runs_dir / LATEST
    if pointer.is_dir():  # a link a user made by hand: `ln -sfn RUN runs/latest`
        return pointer
    if not pointer.is_file():
        return None
    path = Path(pointer.read_text().strip())
    if not path.is_dir():
        raise ConvirtError(f"{pointer} names {path}, which is gone; pass a run directory or train one with "
                           "`convirt pretrain DATA`")
    return path


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
    with writing(path), path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Records of a log; a line cut by a crash (the last one) is dropped, not fatal."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the records up to `step` (a resumed run replays the rest), rewritten atomically."""
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def write_summary(run: Path, summary: dict) -> None:
    write_json(run / SUMMARY, summary)


def read_summary(run: Path) -> dict:
    try:
        return read_json(Path(run) / SUMMARY)
    except (OSError, ConvirtError):
        return {}


def run_warnings(run: Path) -> list[str]:
    """What a user should know before exporting or serving a run: unfinished, or not learning."""
    s = read_summary(run)
    out = []
    status = s.get("status", "complete" if s else "unknown")
    if status != "complete":
        where = f" at step {s['steps']} of {s['total_steps']}" if "total_steps" in s else ""
        how = {"interrupted": f"was interrupted{where}", "running": f"has not finished{where} (still running, or killed)",
               "unknown": "has no summary.json (it never finished)"}.get(status, f"is {status}{where}")
        out.append(f"{run} {how}; its weights are a partly trained model. Finish it with "
                   f"`convirt pretrain --out {run} --resume`")
    learning = s.get("learning") or {}
    if learning.get("collapsed"):
        out.append(f"{run} did not learn: {learning.get('message', 'its loss stayed at ln(batch size)')}")
    return out
