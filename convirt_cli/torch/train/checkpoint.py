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
from convirt_cli.torchfree.files import atomic_write_text


def save_checkpoint(run: Path, model: torch.nn.Module, state: dict[str, Any], keep: int = 2) -> Path:
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    final = ckdir / f"step-{state['step']:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=ckdir))
    os.chmod(tmp, 0o755)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(ckdir / "last", final.name + "\n")
    for old in sorted(ckdir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def last_checkpoint(run: Path) -> Path | None:
    pointer = run / "checkpoints" / "last"
    if not pointer.is_file():
        return None
    path = run / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Restore weights into `model`; return the training state (optimizer, step, rng...)."""
    try:
        weights = load_file(str(path / "model.safetensors"))
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - reported in one line, whatever broke the file
        raise ConvirtError(f"{path}: checkpoint unreadable ({type(e).__name__}: {e}); "
                           "delete it to resume from the previous one") from None
    model.load_state_dict(weights)
    return state
