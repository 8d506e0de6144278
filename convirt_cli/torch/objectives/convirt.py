"""ConVIRT (Zhang et al. 2020): image and report views, two towers, bidirectional InfoNCE (losses/convirt.py).

Validation measures the loss on whole reports without augmentation and, because a loss can stay flat while
the ranking improves, image->report retrieval among the validation pairs (recall@1/@5 against chance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from convirt_cli.torch.data.dataset import Collate, make_dataset
from convirt_cli.torch.data.transforms import augment, to_model_input
from convirt_cli.torch.losses import convirt_loss
from convirt_cli.torch.model import ConVIRT, save_model
from convirt_cli.torch.objectives import Objective
from convirt_cli.torch.train import guard
from convirt_cli.torch.train.device import autocast
from convirt_cli.torch.train.distributed import Dist, all_reduce_mean, gather_with_grad
from convirt_cli.torch.train.gradcache import cached_backward, split
from convirt_cli.torchfree.config import PretrainConfig
from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.evaluate.ranking import pair_recall_at_k
from convirt_cli.torchfree.registry import ModelConfig

VAL_RETRIEVAL_ROWS = 1000  # a fixed subset keeps the per-epoch check cheap on large validation sets


class ConVIRTObjective(Objective):
    loss_label = "ConVIRT loss (image<->text InfoNCE)"

    def __init__(self, model: ConVIRT, cfg: PretrainConfig, device: torch.device, dist: Dist):
        super().__init__(model, cfg, device, dist)
        self.collate = Collate(model.tokenizer, model.cfg.text.max_length)

    @classmethod
    def model_config(cls, base: ModelConfig) -> ModelConfig:
        if base.text is None:
            raise ConvirtError(f"model '{base.name}' is image-only: --objective convirt needs a text tower; pick a "
                               "ConVIRT preset (`convirt models`) and start its image tower from this one with "
                               "--image-init RUN")
        return base

    @property
    def guard_batch(self) -> int:
        """The collapsed start of InfoNCE is ln(this): the candidates each row is ranked against."""
        return self.batch_size

    def dataset(self, rows: list[Row], train: bool, seed: int):
        view = self.cfg.text_view if train else "report"
        return make_dataset(rows, self.model.cfg.image.image_size, text_view=view, seed=seed,
                            window=self.model.cfg.image.window, train=train, rank=self.dist.rank, world=self.dist.world)

    def trainable(self) -> torch.nn.Module:
        return self.model

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr,
                 "weight_decay": weight_decay}]

    def _inputs(self, batch: dict, g: torch.Generator | None):
        """uint8 batch -> standardised images (augmented when a generator is given), token tensors."""
        im = self.model.cfg.image
        images = batch["images"].to(self.device, non_blocking=True)
        x = augment(images, g) if g is not None else images
        return (to_model_input(x, im.mean, im.std, im.in_chans), batch["input_ids"].to(self.device, non_blocking=True),
                batch["attention_mask"].to(self.device, non_blocking=True))

    def loss(self, net: torch.nn.Module, batch: dict, step: int, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        x, ids, mask = self._inputs(batch, g)
        with autocast(self.device, self.cfg.precision):
            v, u = net(x, ids, mask)
        v_all, offset = gather_with_grad(v, self.dist)
        u_all, _ = gather_with_grad(u, self.dist)
        lc = self.model.cfg.loss
        return convirt_loss(v, u, lc.tau, lc.lam, v_all=v_all, u_all=u_all, offset=offset), {}

    def loss_and_backward(self, net: torch.nn.Module, batch: dict, step: int, g: torch.Generator, scale=None,
                          check=None) -> tuple[torch.Tensor, dict]:
        """--accum-steps K: the batch's K sub-batches of --batch-size rows embedded one at a time (GradCache), the
        loss over all of them (every row against all K x B x world negatives)."""
        x, ids, mask = self._inputs(batch, g)
        lc = self.model.cfg.loss

        def embed(xc, ic, mc):
            with autocast(self.device, self.cfg.precision):
                v, u = net(xc, ic, mc)
            return v.float(), u.float()

        def loss_fn(v, u):
            v_all, offset = gather_with_grad(v, self.dist)
            u_all, _ = gather_with_grad(u, self.dist)
            return convirt_loss(v, u, lc.tau, lc.lam, v_all=v_all, u_all=u_all, offset=offset)

        chunks = [(x[s], ids[s], mask[s]) for s in split(len(x), self.cfg.accum_steps)]
        return cached_backward(chunks, embed, loss_fn, getattr(net, "no_sync", None), check, scale), {}

    @torch.no_grad()
    def validate(self, loader: DataLoader) -> dict:
        """Mean loss over validation batches (whole reports, no augmentation) and image->report recall@k."""
        self.model.eval()
        lc = self.model.cfg.loss
        losses, vs, us, texts = [], [], [], []
        for batch in loader:
            if batch["images"].shape[0] < 2:
                continue
            x, ids, mask = self._inputs(batch, None)
            with autocast(self.device, self.cfg.precision):
                v, u = self.model(x, ids, mask)
            losses.append(float(convirt_loss(v, u, lc.tau, lc.lam)))
            if sum(len(t) for t in texts) < VAL_RETRIEVAL_ROWS:
                vs.append(v.float().cpu().numpy())
                us.append(u.float().cpu().numpy())
                texts.append(batch["texts"])
        self.model.train()
        if not losses:
            return {}
        out = {"val_loss": all_reduce_mean(sum(losses) / len(losses), self.dist, self.device)}
        v, u = np.concatenate(vs)[:VAL_RETRIEVAL_ROWS], np.concatenate(us)[:VAL_RETRIEVAL_ROWS]
        flat = [t for chunk in texts for t in chunk][:VAL_RETRIEVAL_ROWS]
        groups = np.unique(flat, return_inverse=True)[1]
        sim = v @ u.T
        for k in (1, 5):
            out[f"val_i2t_r{k}"], out[f"val_r{k}_chance"] = pair_recall_at_k(sim, groups, k)
        out["val_retrieval_rows"] = len(flat)
        return out

    def learning(self, losses: list[float], warned_at: dict | None, val: dict | None) -> dict:
        return guard.verdict(losses, self.batch_size, warned_at, val)

    def save(self, run: Path) -> None:
        save_model(self.model, run)
