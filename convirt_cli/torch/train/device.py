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


def autocast(device: torch.device, precision: str = "auto"):
    """auto: bf16 autocast on CUDA, full precision on CPU (CPU bf16 is slower than fp32 on most machines);
    fp32 | bf16 | fp16 as asked (fp16 trains with a GradScaler, see grad_scaler)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler is then a no-op)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
