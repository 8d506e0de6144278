"""RAD-DINO's segmentation evaluation: a linear head on frozen patch features (a ViT's patch tokens, or a CNN's
last feature map), one logistic regression shared by every patch, trained on the share of each patch's pixels
that the mask covers. Its logits are upsampled to the image and thresholded at 0.5; Dice and IoU per image.

The strength of the L2 penalty is picked on the validation images by Dice, as the linear probe picks it by AUC.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from convirt_cli.torch.data.transforms import to_model_input
from convirt_cli.torch.towers import ImageTower
from convirt_cli.torchfree.evaluate.metrics import dice_iou, segmentation_metrics

L2_GRID = (1e-1, 1e-2, 1e-3, 1e-4)


@torch.no_grad()
def dense_features(tower: ImageTower, images: np.ndarray, device: torch.device, batch_size: int = 64,
                   on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """uint8 images [N, 1, S, S] -> float32 [N, h, w, D] from the frozen tower."""
    tower.eval().to(device)
    cfg, out = tower.cfg, []
    for i in range(0, len(images), batch_size):
        x = to_model_input(torch.from_numpy(images[i:i + batch_size]).to(device), cfg.mean, cfg.std, cfg.in_chans)
        out.append(tower.dense(x).float().permute(0, 2, 3, 1).cpu().numpy())
        if on_batch:
            on_batch(len(x))
    return np.concatenate(out) if out else np.zeros((0, 1, 1, tower.num_features), np.float32)


def patch_targets(masks: np.ndarray, h: int, w: int) -> np.ndarray:
    """Binary masks [N, H, W] -> the covered share of each of the h x w patches [N, h, w] (area average)."""
    t = torch.from_numpy(masks.astype(np.float32))[:, None]
    return F.adaptive_avg_pool2d(t, (h, w))[:, 0].numpy()


def mask_logits(weight: torch.Tensor, bias: torch.Tensor, feats: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Patch features [N, h, w, D] -> pixel logits [N, H, W]: patch logits upsampled bilinearly."""
    with torch.no_grad():
        logits = torch.from_numpy(feats).double() @ weight + bias  # [N, h, w]
        return F.interpolate(logits[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def predict_masks(weight: torch.Tensor, bias: torch.Tensor, feats: np.ndarray, size: tuple[int, int],
                  threshold: float = 0.0) -> np.ndarray:
    """Binary masks [N, H, W]: pixel logits above `threshold` (0: sigmoid > 0.5)."""
    return mask_logits(weight, bias, feats, size) > threshold


def best_threshold(logits: np.ndarray, masks: np.ndarray) -> tuple[float, dict]:
    """The logit threshold with the best mean Dice on the images that have a target (validation data): regions
    are a small share of the pixels, so sigmoid > 0.5 under-segments them. Candidates: logit quantiles."""
    has = masks.reshape(len(masks), -1).any(1)
    qs = np.quantile(logits, np.linspace(0.5, 0.995, 40))
    best = (0.0, -1.0, {})
    for t in np.unique(np.concatenate([[0.0], qs])):
        dice, iou = dice_iou(logits > t, masks)
        m = segmentation_metrics(dice, iou, has)
        key = m["dice_positive"] if has.any() else m["dice"]
        if key > best[1]:
            best = (float(t), key, m)
    return best[0], best[2]


def fit_segmentation_probe(x_train: np.ndarray, m_train: np.ndarray, x_val: np.ndarray, m_val: np.ndarray,
                           max_iter: int = 100) -> dict:
    """Fit on train patches (features [N, h, w, D], masks [N, H, W]); pick L2 and the logit threshold by validation
    Dice. Returns the head folded back onto raw features: {"weight": [D], "bias": scalar, "threshold", "l2", "val"}."""
    _, h, w, d = x_train.shape
    flat = x_train.reshape(-1, d)
    mu, sd = flat.mean(0), flat.std(0) + 1e-6
    xt = torch.from_numpy((flat - mu) / sd).double()
    yt = torch.from_numpy(patch_targets(m_train, h, w).reshape(-1)).double()
    weight = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    best: dict | None = None
    for l2 in L2_GRID:  # strong to weak, each warm-starting the next
        opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure(opt: torch.optim.Optimizer = opt, l2: float = l2) -> torch.Tensor:
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(xt @ weight + bias, yt) + 0.5 * l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            w_raw = weight / torch.from_numpy(sd).double()
            b_raw = bias - (w_raw * torch.from_numpy(mu).double()).sum()
        val, threshold = {}, 0.0
        if len(x_val):
            threshold, val = best_threshold(mask_logits(w_raw, b_raw, x_val, m_val.shape[1:]), m_val)
        key = val.get("dice_positive", val.get("dice", 0.0))
        if best is None or (not np.isnan(key) and key > best["key"]):
            best = {"weight": w_raw.clone(), "bias": b_raw.clone(), "l2": l2, "val": val, "threshold": threshold,
                    "key": key if not np.isnan(key) else -1.0}
        if not len(x_val):
            break
    best.pop("key")
    return best
