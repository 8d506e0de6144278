"""A fine-tuned image classifier: image tower -> one linear head. What `convirt finetune` saves.

forward(images) takes standardised images [B, C, S, S] (data.transforms.to_model_input) and returns
logits [B, K]:
  multilabel  K = number of labels; probabilities = sigmoid(logits)
  multiclass  K = number of classes (2 for a binary column); probabilities = softmax(logits)
  regression  K = 1; the value itself in the target's units (target scaling is folded into the head)

A saved classifier is a folder (a folder holding classifier.json is a classifier):
  classifier.json     task, label_names, image tower config, head shape, provenance
  image/              the tower (towers.ImageTower.save: timm local-dir or HF form)
  head.safetensors    head.weight [K, F], head.bias [K]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from convirt_cli.torch.towers import ImageTower
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import staged_dir
from convirt_cli.torchfree.registry import ImageTowerConfig

CLASSIFIER_FILE = "classifier.json"
TASKS = ("multilabel", "multiclass", "regression")


class ImageClassifier(nn.Module):
    def __init__(self, tower: ImageTower, task: str, label_names: list[str], meta: dict[str, Any] | None = None):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {task!r}")
        self.tower = tower
        self.task = task
        self.label_names = list(label_names)
        self.meta = dict(meta or {})
        self.head = nn.Linear(tower.num_features, 1 if task == "regression" else len(label_names))

    @property
    def image_cfg(self) -> ImageTowerConfig:
        return self.tower.cfg

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S] standardised -> logits [B, K] (see the module docstring for K)."""
        return self.head(self.tower(images))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (multilabel, multiclass) or values (regression), [B, K]."""
        return scores_from_logits(self.task, self(images))


def scores_from_logits(task: str, logits: torch.Tensor) -> torch.Tensor:
    if task == "multilabel":
        return torch.sigmoid(logits)
    if task == "multiclass":
        return torch.softmax(logits, dim=-1)
    return logits


def head_loss(task: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss over known targets (NaN = missing is masked out).

    logits [B, K]; y: multilabel [B, K] 0/1/NaN (BCE), multiclass [B] index/NaN (CE),
    regression [B] standardised value/NaN (MSE on logits[:, 0]).
    """
    if task == "multilabel":
        known = ~torch.isnan(y)
        if not known.any():
            return logits.sum() * 0
        return F.binary_cross_entropy_with_logits(logits[known], y[known])
    known = ~torch.isnan(y)
    if not known.any():
        return logits.sum() * 0
    if task == "multiclass":
        return F.cross_entropy(logits[known], y[known].long())
    return F.mse_loss(logits[known, 0], y[known])


def fold_target_scale(head: nn.Linear, mean: float, std: float) -> None:
    """Regression heads train on standardised targets; fold y = z * std + mean into the weights."""
    with torch.no_grad():
        head.weight.mul_(std)
        head.bias.mul_(std).add_(mean)


def save_classifier(model: ImageClassifier, path: Path) -> None:
    """Write the folder beside `path`, then swap it in whole, so a crash never leaves half a classifier."""
    with staged_dir(path) as tmp:
        model.tower.save(tmp / "image")
        save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
                  str(tmp / "head.safetensors"))
        meta = {"format": 1, "task": model.task, "label_names": model.label_names,
                "num_features": model.tower.num_features, "num_outputs": model.head.out_features,
                "image": model.image_cfg.model_dump(), "meta": model.meta}
        (tmp / CLASSIFIER_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def is_classifier_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CLASSIFIER_FILE).is_file()


def load_classifier(path: Path) -> ImageClassifier:
    """Rebuild a saved classifier exactly (eval mode)."""
    path = Path(path)
    for part in (CLASSIFIER_FILE, "image", "head.safetensors"):
        if not (path / part).exists():
            raise ConvirtError(f"{path} is not a saved classifier: '{part}' is missing; pass a folder made by "
                               "`convirt finetune` (its models/<name>/)")
    try:
        meta = json.loads((path / CLASSIFIER_FILE).read_text())
        cfg = ImageTowerConfig.model_validate(meta["image"])
        task, names = meta["task"], meta["label_names"]
    except (json.JSONDecodeError, KeyError, ValueError) as e:
        raise ConvirtError(f"{path / CLASSIFIER_FILE}: unreadable ({type(e).__name__}: {e})") from None
    model = ImageClassifier(ImageTower(cfg, local_dir=path / "image"), task, names, meta.get("meta"))
    head = load_file(str(path / "head.safetensors"))
    try:
        model.head.load_state_dict(head)
    except RuntimeError as e:
        raise ConvirtError(f"{path / 'head.safetensors'} does not match classifier.json: {e}") from None
    return model.eval()
