"""SimCLR (Chen et al. 2020), the image-only contrastive baseline ConVIRT was compared with: two views of each
image under ConVIRT's own augmentations, a one-hidden-layer ReLU projection head, NT-Xent over the batch (gathered
over ranks under torchrun). The run keeps the image tower; the projection head is discarded, as in the paper."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from convirt_cli.torch.data.dataset import Collate, make_dataset
from convirt_cli.torch.data.multicrop import two_views
from convirt_cli.torch.data.transforms import to_model_input
from convirt_cli.torch.losses.nt_xent import nt_xent
from convirt_cli.torch.model import ImageModel, projection_head, save_model
from convirt_cli.torch.objectives import Objective
from convirt_cli.torch.train import guard
from convirt_cli.torch.train.device import autocast
from convirt_cli.torch.train.distributed import Dist, all_reduce_mean, gather_with_grad
from convirt_cli.torch.train.gradcache import cached_backward, split
from convirt_cli.torchfree.config import PretrainConfig
from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.registry import ModelConfig


class _Net(torch.nn.Module):
    def __init__(self, model: ImageModel, hidden: int, dim: int):
        super().__init__()
        self.image = model.image
        self.proj = projection_head(model.image.num_features, hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.image(x))


class SimCLRObjective(Objective):
    loss_label = "SimCLR loss (NT-Xent)"

    def __init__(self, model: ImageModel, cfg: PretrainConfig, device: torch.device, dist: Dist):
        super().__init__(model, cfg, device, dist)
        proj = model.cfg.projection
        self.net = _Net(model, proj.hidden if proj else 2048, proj.dim if proj else 128)
        self.module = self.net
        self.tau = model.cfg.loss.tau
        self.collate = Collate(None)

    @classmethod
    def model_config(cls, base: ModelConfig) -> ModelConfig:
        """The image tower and the preset's projection head (discarded after training, as in the paper)."""
        return base.model_copy(update={"text": None})

    @property
    def guard_batch(self) -> int:
        return 2 * self.batch_size - 1  # NT-Xent ranks each view against the 2B - 1 others

    def dataset(self, rows: list[Row], train: bool, seed: int):
        return make_dataset(rows, self.model.cfg.image.image_size, seed=seed, with_text=False,
                            window=self.model.cfg.image.window, train=train, rank=self.dist.rank, world=self.dist.world)

    def trainable(self) -> torch.nn.Module:
        return self.net

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return [{"params": [p for p in self.net.parameters() if p.requires_grad], "lr": lr,
                 "weight_decay": weight_decay}]

    def _views(self, batch: dict, g: torch.Generator) -> torch.Tensor:
        im = self.model.cfg.image
        images = batch["images"].to(self.device, non_blocking=True)
        return torch.cat([to_model_input(v, im.mean, im.std, im.in_chans) for v in two_views(images, g)])

    def loss(self, net: torch.nn.Module, batch: dict, step: int, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        x = self._views(batch, g)
        with autocast(self.device, self.cfg.precision):
            z = net(x)
        z1, z2 = z.float().chunk(2)
        if self.dist.world > 1:  # negatives from every rank: the global batch
            z1, _ = gather_with_grad(z1, self.dist)
            z2, _ = gather_with_grad(z2, self.dist)
        return nt_xent(z1, z2, self.tau), {}

    def loss_and_backward(self, net: torch.nn.Module, batch: dict, step: int, g: torch.Generator, scale=None,
                          check=None) -> tuple[torch.Tensor, dict]:
        """--accum-steps: GradCache over the two views of K sub-batches (NT-Xent over all 2 x K x B views)."""
        views = self._views(batch, g)
        b = views.shape[0] // 2
        v1, v2 = views[:b], views[b:]

        def embed(a, c):  # both views in one forward, as in the plain step (batch norm sees them together)
            with autocast(self.device, self.cfg.precision):
                z1, z2 = net(torch.cat([a, c])).float().chunk(2)
            return z1, z2

        def loss_fn(z1, z2):
            if self.dist.world > 1:
                z1, _ = gather_with_grad(z1, self.dist)
                z2, _ = gather_with_grad(z2, self.dist)
            return nt_xent(z1, z2, self.tau)

        chunks = [(v1[s], v2[s]) for s in split(b, self.cfg.accum_steps)]
        return cached_backward(chunks, embed, loss_fn, getattr(net, "no_sync", None), check, scale), {}

    @torch.no_grad()
    def validate(self, loader: DataLoader) -> dict:
        self.net.eval()
        g = torch.Generator().manual_seed(12345)
        losses = []
        for batch in loader:
            if batch["images"].shape[0] >= 2:
                z1, z2 = self.net(self._views(batch, g)).float().chunk(2)
                losses.append(float(nt_xent(z1, z2, self.tau)))
        self.net.train()
        return {"val_loss": all_reduce_mean(sum(losses) / len(losses), self.dist, self.device)} if losses else {}

    def learning(self, losses: list[float], warned_at: dict | None, val: dict | None) -> dict:
        return guard.verdict(losses, self.guard_batch, warned_at, None)

    def save(self, run: Path) -> None:
        save_model(ImageModel(self.model.cfg, self.net.image), run)
