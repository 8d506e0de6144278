"""Full fine-tuning: a copy of the tower and a linear head trained together with the paper's augmentations (AdamW,
warmup + cosine), early-stopped on the validation metric."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch

from convirt_cli.torch.classifier import ImageClassifier, fold_target_scale, head_loss, scores_from_logits
from convirt_cli.torch.data.transforms import augment, to_model_input
from convirt_cli.torch.towers import ImageTower
from convirt_cli.torch.train.device import autocast
from convirt_cli.torch.train.schedule import warmup_cosine
from convirt_cli.torchfree.config import FinetuneConfig
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.evaluate.labels import Labels
from convirt_cli.torchfree.evaluate.metrics import is_better, task_metrics


@torch.no_grad()
def predict(model: ImageClassifier, images: np.ndarray, device: torch.device, batch_size: int = 128) -> np.ndarray:
    """uint8 [N, 1, S, S] -> scores: probabilities [N, K], or values [N] for regression."""
    model.eval().to(device)
    cfg = model.image_cfg
    out = []
    for i in range(0, len(images), batch_size):
        x = to_model_input(torch.from_numpy(images[i:i + batch_size]).to(device), cfg.mean, cfg.std, cfg.in_chans)
        with autocast(device):
            logits = model(x)
        out.append(scores_from_logits(model.task, logits.float()).cpu().numpy())
    scores = np.concatenate(out) if out else np.zeros((0, model.head.out_features), np.float32)
    return scores[:, 0] if model.task == "regression" else scores


def train_full(tower: ImageTower, labels: Labels, images: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
               cfg: FinetuneConfig, seed: int, device: torch.device, metric: str,
               on_epoch: Callable[[dict], None] | None = None) -> tuple[ImageClassifier, dict]:
    """Fine-tune a copy of `tower` with a linear head.

    Keeps the weights of the epoch with the best validation `metric`; stops after `patience` epochs
    without improvement. Regression trains on standardised targets, folded into the head at the end.
    """
    torch.manual_seed(seed)
    model = ImageClassifier(copy.deepcopy(tower), labels.task, labels.names).to(device)
    y, y_mean, y_std = _targets(labels, train_idx)
    run = _Steps(model, cfg, len(train_idx), seed, device)
    best_state, best_val, best_epoch, bad = None, {}, 0, 0
    for epoch in range(cfg.epochs):
        losses = run.epoch(epoch, train_idx, images, y, labels.task)
        val: dict[str, float] = {}
        if len(val_idx):
            scores = predict(model, images[val_idx], device)
            if labels.task == "regression":
                scores = scores * y_std + y_mean
            val = task_metrics(labels.task, labels.y[val_idx], scores, labels.names)
        if on_epoch:
            on_epoch({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val": val.get(metric)})
        if best_state is None or not val or is_better(metric, val.get(metric, float("nan")),
                                                      best_val.get(metric, float("nan"))):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_val, best_epoch, bad = val, epoch + 1, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    if labels.task == "regression":
        fold_target_scale(model.head, y_mean, y_std)
    return model.eval(), {"best_epoch": best_epoch, "epochs_run": epoch + 1, "val": best_val}


def _targets(labels: Labels, train_idx: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(targets as trained, mean, sd): regression standardised by the training rows' known values."""
    y = labels.y.astype(np.float32)
    if labels.task != "regression":
        return y, 0.0, 1.0
    known = y[train_idx][~np.isnan(y[train_idx])]
    y_mean, y_std = float(known.mean()), float(known.std() + 1e-8)
    return (y - y_mean) / y_std, y_mean, y_std


class _Steps:
    """The optimiser and lr schedule of one fine-tuning run, and its epochs of steps."""

    def __init__(self, model: ImageClassifier, cfg: FinetuneConfig, n_train: int, seed: int, device: torch.device):
        self.model, self.cfg, self.seed, self.device = model, cfg, seed, device
        self.bs = min(cfg.batch_size, n_train)
        self.per_epoch = max(1, n_train // self.bs)
        self.total = cfg.epochs * self.per_epoch
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0

    def epoch(self, epoch: int, train_idx: np.ndarray, images: np.ndarray, y: np.ndarray, task: str) -> list[float]:
        """One shuffled pass (drop_last: a batch of 1 would break BatchNorm); returns the step losses."""
        model, cfg, icfg = self.model, self.cfg, self.model.image_cfg
        model.train()
        perm = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        order = train_idx[perm.numpy()]
        losses = []
        for b in range(self.per_epoch):
            idx = np.sort(order[b * self.bs:(b + 1) * self.bs])
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr * warmup_cosine(self.step, self.total, int(0.05 * self.total))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
            x = to_model_input(augment(torch.from_numpy(images[idx]).to(self.device), g), icfg.mean, icfg.std,
                               icfg.in_chans)
            with autocast(self.device):
                logits = model(x)
            loss = head_loss(task, logits.float(), torch.from_numpy(y[idx]).to(self.device))
            if not math.isfinite(loss.item()):
                raise ConvirtError(f"fine-tuning loss became {loss.item()} at epoch {epoch}; lower --lr")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            self.opt.step()
            self.step += 1
            losses.append(loss.item())
        return losses
