"""Pretraining objectives behind one small interface that the training loop (torch/train/loop.py) calls.

An objective decides what differs between ConVIRT, DINO and SimCLR: the views a dataset yields, the model
and its parameter groups, the loss of a batch, what validation measures, and what the run saves. The loop
owns everything else: data checks, the step budget, schedules, checkpoints, interrupts, metrics, plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from convirt_cli.torchfree.data.readers import Row


class Objective(Protocol):
    name: str
    loss_label: str  # what the loss plot's y axis says
    need_text: bool  # rows without text are skipped before training
    module: torch.nn.Module  # every weight a checkpoint holds (towers, heads; a teacher, centres)
    batch_size: int  # the global batch the loss sees (for the collapse guard)

    def dataset(self, rows: list[Row], train: bool, seed: int) -> Dataset: ...
    def collate(self, items: list[dict]) -> dict: ...
    def trainable(self) -> torch.nn.Module: ...  # what DDP wraps and the optimiser updates
    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]: ...
    def loss(self, net: torch.nn.Module, batch: dict, step: int, g: torch.Generator) -> tuple[torch.Tensor, dict]: ...
    def after_step(self, step: int) -> dict: ...  # e.g. an EMA teacher update; returns metrics to log
    def validate(self, loader: DataLoader) -> dict: ...
    def learning(self, losses: list[float], warned_at: dict | None, val: dict | None) -> dict: ...
    def save(self, run: Path) -> None: ...
