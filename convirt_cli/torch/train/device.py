"""Which device trains, and in what precision."""

from __future__ import annotations

import contextlib

import torch

from convirt_cli.torchfree.errors import ConvirtError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConvirtError("--device cuda but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision on CPU (CPU bf16 is slower than fp32 on most machines)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
