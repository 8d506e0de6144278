"""Checkpoints: weights in safetensors, optimizer/step/RNG in a torch file read with weights_only=True.

Layout: <run>/checkpoints/step-000123/{model.safetensors, state.pt} and <run>/checkpoints/last, a
one-line pointer replaced atomically after the folder is complete, so a kill at any moment leaves
the previous checkpoint usable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import atomic_write_text, writing


def save_checkpoint(run: Path, model: torch.nn.Module, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoints/step-N whole (built in a temporary folder, then renamed), then point `last` at it. A
    failed write (full disk, size limit) is one WriteError naming the file; the temporary folder is removed and the
    previous checkpoints stay as they were."""
    ckdir = run / "checkpoints"
    final = ckdir / f"step-{state['step']:07d}"
    with writing(ckdir):
        ckdir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=ckdir))
    try:
        os.chmod(tmp, 0o755)
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with writing(final / "model.safetensors"):
            save_file(weights, str(tmp / "model.safetensors"))
        _save_state(state, tmp / "state.pt", final / "state.pt")
        with writing(final):
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(ckdir / "last", final.name + "\n")
    for old in sorted(ckdir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class _Writer:
    """A file torch.save writes through, keeping the OSError it met: torch reports a failed write as a RuntimeError
    ('unexpected pos ...') without the cause."""

    def __init__(self, fd: int):
        self.fd, self.error = fd, None

    def write(self, data) -> int:
        view, done = memoryview(data).cast("B"), 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as e:
            self.error = e
            raise
        return done

    def flush(self) -> None:
        pass


def _save_state(state: dict[str, Any], path: Path, named: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    writer = _Writer(fd)
    try:
        with writing(named):
            try:
                torch.save(state, writer)
            except RuntimeError:
                if writer.error is not None:
                    raise writer.error from None
                raise
    finally:
        os.close(fd)


def candidates(run: Path) -> list[Path]:
    """Checkpoint folders to resume from, best first: the one `last` names, then the others newest first
    (`last` may name a folder that was deleted, or one whose files a crash or a disk damaged)."""
    ckdir = run / "checkpoints"
    found = sorted((p for p in ckdir.glob("step-*") if p.is_dir()), key=lambda p: p.name, reverse=True)
    pointer = ckdir / "last"
    named = ckdir / pointer.read_text().strip() if pointer.is_file() else None
    if named is not None and named in found:
        found.remove(named)
        found.insert(0, named)
    return found


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, training state) of one checkpoint folder; ConvirtError naming what is wrong with it."""
    try:
        weights = load_file(str(path / "model.safetensors"))
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - reported in one line, whatever broke the file
        raise ConvirtError(f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'unreadable'}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise ConvirtError("state.pt holds no training state")
    return weights, state


def load_latest(run: Path, model: torch.nn.Module) -> tuple[Path, dict[str, Any], list[tuple[Path, str]]]:
    """Restore the newest readable checkpoint into `model`: (its folder, its training state, the newer ones
    skipped with the reason). ConvirtError when none can be read."""
    skipped: list[tuple[Path, str]] = []
    for path in candidates(run):
        try:
            weights, state = read_checkpoint(path)
            model.load_state_dict(weights)
        except (ConvirtError, RuntimeError) as e:
            skipped.append((path, str(e).splitlines()[0][:200]))
            continue
        return path, state, skipped
    why = "; ".join(f"{p.name}: {r}" for p, r in skipped)
    raise ConvirtError(f"--resume: {run} has no readable checkpoint" + (f" ({why})" if why else "")
                       + "; start again without --resume")
