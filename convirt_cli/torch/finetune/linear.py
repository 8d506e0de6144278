"""Linear probe as a classifier: the frozen tower's features (computed once per init) and the L-BFGS head chosen on
validation (torch/probe.py), put together as an ImageClassifier."""

from __future__ import annotations

import numpy as np
import torch

from convirt_cli.torch.classifier import ImageClassifier, scores_from_logits
from convirt_cli.torch.probe import fit_linear_probe
from convirt_cli.torch.towers import ImageTower
from convirt_cli.torchfree.evaluate.labels import Labels


def linear_classifier(tower: ImageTower, labels: Labels, feats: np.ndarray, train_idx: np.ndarray,
                      val_idx: np.ndarray, seed: int) -> tuple[ImageClassifier, dict]:
    """Frozen tower + the L-BFGS head chosen on validation, as an ImageClassifier."""
    res = fit_linear_probe(labels.task, labels.num_outputs, feats[train_idx], labels.y[train_idx],
                           feats[val_idx], labels.y[val_idx], labels.names, seed=seed)
    model = ImageClassifier(tower, labels.task, labels.names)
    with torch.no_grad():
        model.head.weight.copy_(res.weight)
        model.head.bias.copy_(res.bias)
    return model.eval(), {"l2": res.l2, "val": res.val}


def scores_from_features(model: ImageClassifier, feats: np.ndarray) -> np.ndarray:
    """The classifier's scores from the tower's features [N, F]: probabilities [N, K], or values [N] (regression)."""
    with torch.no_grad():
        out = scores_from_logits(model.task, model.head(torch.from_numpy(feats).float().to(model.head.weight.device)))
    out = out.cpu().numpy()
    return out[:, 0] if model.task == "regression" else out
