"""Linear probe: a frozen image tower's features, computed once, and a linear head fitted to convergence.

This is the protocol RAD-DINO and most papers call a linear probe (logistic regression on frozen
features): full-batch L-BFGS on standardised features, the L2 strength picked on the validation
split from a small grid. The chosen head is folded back onto raw features so it becomes the
`head` of an ImageClassifier unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from convirt_cli.torch.classifier import fold_target_scale, head_loss, scores_from_logits
from convirt_cli.torch.data.transforms import to_model_input
from convirt_cli.torch.towers import ImageTower
from convirt_cli.torchfree.evaluate.metrics import PRIMARY, is_better, task_metrics

L2_GRID = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)  # strong to weak: each fit warm-starts the next


@torch.no_grad()
def extract_features(tower: ImageTower, images: np.ndarray, device: torch.device, batch_size: int = 128,
                     on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """uint8 images [N, 1, S, S] -> float32 features [N, F] from the tower in eval mode."""
    tower.eval().to(device)
    cfg = tower.cfg
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).to(device)
        out.append(tower(to_model_input(x, cfg.mean, cfg.std, cfg.in_chans)).float().cpu().numpy())
        if on_batch:
            on_batch(len(x))
    return np.concatenate(out) if out else np.zeros((0, tower.num_features), np.float32)


@dataclass
class ProbeResult:
    weight: torch.Tensor  # [K, F], applies to raw features
    bias: torch.Tensor  # [K]
    l2: float
    val: dict[str, float]


def _fit(task: str, x: torch.Tensor, y: torch.Tensor, head: torch.nn.Linear, l2: float, max_iter: int) -> None:
    """Minimise mean loss + l2/2 ||W||^2 over `head` in place (full batch, L-BFGS)."""
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = head_loss(task, head(x), y) + 0.5 * l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)


def fit_linear_probe(task: str, num_outputs: int, x_train: np.ndarray, y_train: np.ndarray,
                     x_val: np.ndarray, y_val: np.ndarray, names: list[str], seed: int = 0,
                     l2_grid: tuple[float, ...] = L2_GRID, max_iter: int = 100) -> ProbeResult:
    """Fit one head per L2 strength on train; keep the best by the task's primary metric on val.

    x_* [N, F] raw features; y_* as evaluate.labels.Labels.y. Without a usable validation split the
    middle of the grid is used.
    """
    mu = x_train.mean(0)
    sd = x_train.std(0) + 1e-6
    xt = torch.from_numpy((x_train - mu) / sd).double()
    xv = torch.from_numpy((x_val - mu) / sd).double()
    y_mean, y_std = 0.0, 1.0
    yt = torch.from_numpy(y_train.astype(np.float64))
    if task == "regression":
        known = y_train[~np.isnan(y_train)]
        y_mean, y_std = float(known.mean()), float(known.std() + 1e-8)
        yt = (yt - y_mean) / y_std
    metric = PRIMARY[task]
    has_val = len(x_val) > 0 and np.any(~np.isnan(y_val))
    grid = l2_grid if has_val else (l2_grid[len(l2_grid) // 2],)
    best: tuple[torch.nn.Linear, float, dict] | None = None
    torch.manual_seed(seed)
    head = torch.nn.Linear(xt.shape[1], num_outputs).double()
    torch.nn.init.zeros_(head.weight)  # the convex problem's optimum does not depend on the start
    torch.nn.init.zeros_(head.bias)
    for l2 in grid:
        _fit(task, xt, yt, head, l2, max_iter)
        with torch.no_grad():
            out = head(xv)
            if task == "regression":
                out = out * y_std + y_mean
            scores = scores_from_logits(task, out).numpy()
        val = task_metrics(task, y_val, scores[:, 0] if task == "regression" else scores, names) if has_val else {}
        if best is None or is_better(metric, val.get(metric, float("nan")), best[2].get(metric, float("nan"))):
            best = (copy.deepcopy(head), l2, val)
    head, l2, val = best
    # fold the feature standardisation (and the regression target scale) into one raw-feature head
    with torch.no_grad():
        w = head.weight / torch.from_numpy(sd).double()
        b = head.bias - (w * torch.from_numpy(mu).double()).sum(1)
        folded = torch.nn.Linear(w.shape[1], w.shape[0]).double()
        folded.weight.copy_(w)
        folded.bias.copy_(b)
    if task == "regression":
        fold_target_scale(folded, y_mean, y_std)
    return ProbeResult(folded.weight.detach().float(), folded.bias.detach().float(), l2, val)
