"""DINOv2 / RAD-DINO pieces: the DINO head, patch tokens (with iBOT's mask token) from a ViT image tower, the EMA
teacher, and loading a released head (microsoft/rad-dino ships dino_head.safetensors beside the backbone).

The student is the image tower + DINO head (+ iBOT head when not shared); the teacher is an EMA copy that gets no
gradients. The teacher's backbone is what a DINO run saves as its image tower.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convirt_cli.torch.towers import ImageTower
from convirt_cli.torchfree.errors import ConvirtError

HEAD_FILE = "dino_head.safetensors"


class DINOHead(nn.Module):
    """MLP (Linear-GELU x (layers - 1), Linear to the bottleneck) -> L2 normalise -> weight-normalised prototypes
    (no bias). As in DINOv2 (dinov2/layers/dino_head.py), the prototypes' norm g starts at 1 and is trained; DINO v1's
    norm_last_layer froze it. Logits are g_k times the cosine with prototype k."""

    def __init__(self, in_dim: int, prototypes: int, hidden: int = 2048, bottleneck: int = 256, layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        mlp: list[nn.Module] = []
        for i in range(layers):
            mlp.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mlp.append(nn.GELU())
        self.mlp = nn.Sequential(*mlp)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, prototypes, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, eps=1e-6))

    def last_layer_params(self) -> list[nn.Parameter]:
        """The prototypes (direction and norm): what DINOv2 keeps frozen for the first epoch."""
        return list(self.last_layer.parameters())


def load_head(head: DINOHead, path: Path) -> None:
    """A released head (DINOv2's layout: mlp.{0,2,4}, last_layer.weight_g / weight_v, any prefix) into `head`."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - one line, whatever broke the file
        raise ConvirtError(f"{path}: unreadable DINO head ({type(e).__name__}: {e})") from None
    renamed = {}
    for k, v in state.items():
        for prefix in ("dino_head.", "teacher.dino_head.", "student.dino_head.", "module."):
            k = k.removeprefix(prefix)
        k = (k.replace("last_layer.weight_g", "last_layer.parametrizations.weight.original0")
              .replace("last_layer.weight_v", "last_layer.parametrizations.weight.original1"))
        renamed[k] = v
    try:
        head.load_state_dict(renamed)
    except RuntimeError as e:
        raise ConvirtError(f"{path}: does not fit this preset's DINO head ({str(e).splitlines()[0][:200]}); "
                           "set the preset's dino.prototypes / head sizes to the released head's") from None


def is_vit(tower: ImageTower) -> bool:
    m = tower.model
    return (tower.cfg.source == "timm" and hasattr(m, "patch_embed") and hasattr(m, "blocks")) or \
        getattr(getattr(m, "config", None), "model_type", "") in ("dinov2", "dinov2_with_registers", "vit")


def patch_size(tower: ImageTower) -> int:
    m = tower.model
    if tower.cfg.source == "timm":
        return int(m.patch_embed.patch_size[0])
    return int(m.config.patch_size)


class Student(nn.Module):
    """Image tower + DINO head (+ a separate iBOT head, or the DINO head shared) + iBOT's mask token (timm towers;
    transformers' Dinov2Model has its own)."""

    def __init__(self, tower: ImageTower, dino_head: DINOHead, ibot_head: DINOHead | None, use_patches: bool):
        super().__init__()
        self.backbone, self.dino_head, self.ibot_head = tower, dino_head, ibot_head
        self.use_patches = use_patches
        if use_patches and not is_vit(tower):
            raise ConvirtError(f"image tower '{tower.cfg.name}' is not a ViT: iBOT's masked-patch loss needs patch "
                               "tokens; use a ViT preset (dino-tiny, raddino-vitb14) or turn iBOT off "
                               "(the preset's dino.ibot_weight 0)")
        self.mask_token = nn.Parameter(torch.zeros(1, tower.num_features)) \
            if use_patches and tower.cfg.source == "timm" else None

    @property
    def patch_head(self) -> DINOHead:
        return self.ibot_head if self.ibot_head is not None else self.dino_head

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None):
        return self.tokens(x, masks)

    def tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(CLS [B, D], patch tokens [B, P, D] or None for a CNN); `masks` [B, P] replaces those patches' embeddings
        by the mask token before the transformer (iBOT)."""
        tower = self.backbone
        if not self.use_patches or not is_vit(tower):
            return tower(x), None
        m = tower.model
        if tower.cfg.source == "timm":
            h = m.patch_embed(x)
            if masks is not None:
                flat = h.reshape(h.shape[0], -1, h.shape[-1])
                flat = torch.where(masks[..., None], self.mask_token.to(flat.dtype), flat)
                h = flat.view_as(h)
            h = m.norm(m.blocks(m.norm_pre(m.patch_drop(m._pos_embed(h)))))
            return h[:, 0], h[:, m.num_prefix_tokens:]
        out = m(pixel_values=x, bool_masked_pos=masks).last_hidden_state
        skip = 1 + int(getattr(m.config, "num_register_tokens", 0) or 0)
        return out[:, 0], out[:, skip:]


def make_teacher(student: Student) -> Student:
    """An EMA copy without stochastic depth or dropout (DINO and DINOv2 build their teacher without them), so its
    targets carry no noise of their own while the loop keeps every module in train mode."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    for m in teacher.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "drop_prob"):  # timm's DropPath, transformers' Dinov2DropPath
            m.drop_prob = 0.0
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, parameter by parameter (buffers copied)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)
