"""The two-tower ConVIRT model: towers -> one-hidden-layer ReLU projection heads -> L2-normalised v, u.

A saved model is a folder (a run directory, or any folder) holding:
  model.json            the ModelConfig
  image/                timm `local-dir:` form (config.json + model.safetensors) or HF save_pretrained
  text/                 HF save_pretrained + tokenizer files (AutoModel.from_pretrained(dir) loads it)
  heads.safetensors     the projection heads
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from convirt_cli.torch.towers import ImageTower, TextTower, set_grad_checkpointing
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.registry import ModelConfig, get_model_config
from convirt_cli.torchfree.runs import RUN_MODEL_FILE, is_run_dir


def projection_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """g_v / g_u of the paper: a single hidden layer with ReLU."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class ConVIRT(nn.Module):
    has_text = True

    def __init__(self, cfg: ModelConfig, image: ImageTower, text: TextTower):
        super().__init__()
        self.cfg = cfg
        self.image = image
        self.text = text
        self.image_proj = projection_head(image.num_features, cfg.projection.hidden, cfg.projection.dim)
        self.text_proj = projection_head(text.num_features, cfg.projection.hidden, cfg.projection.dim)

    @property
    def tokenizer(self):
        return self.text.tokenizer

    @property
    def dim(self) -> int:
        return self.cfg.projection.dim

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[B, C, H, W] normalised pixels -> [B, d]."""
        v = self.image_proj(self.image(images))
        return F.normalize(v, dim=-1) if normalize else v

    def encode_dense(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, H, W] -> (embeds [B, d] as encode_image, cells [B, h, w, d]): each cell of the tower's feature grid
        through the same projection head, L2-normalised (BioViL's dense features; explain maps them)."""
        pooled, grid = self.image.features(images)
        return F.normalize(self.image_proj(pooled), dim=-1), F.normalize(self.image_proj(grid.permute(0, 2, 3, 1)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[B, T] token ids and mask -> [B, d]."""
        u = self.text_proj(self.text(input_ids, attention_mask))
        return F.normalize(u, dim=-1) if normalize else u

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_grad_checkpointing(self.image.model, enable)
        set_grad_checkpointing(self.text.model, enable)

    def forward(self, images, input_ids, attention_mask):
        return self.encode_image(images), self.encode_text(input_ids, attention_mask)

    def heads_state(self) -> dict[str, torch.Tensor]:
        return {f"image_proj.{k}": v for k, v in self.image_proj.state_dict().items()} | {
            f"text_proj.{k}": v for k, v in self.text_proj.state_dict().items()
        }


class ImageModel(nn.Module):
    """An image-only run (DINO, SimCLR): the image tower alone; its embedding is the L2-normalised tower output
    (a ViT's CLS token, a CNN's pooled features)."""

    has_text = False

    def __init__(self, cfg: ModelConfig, image: ImageTower):
        super().__init__()
        self.cfg, self.image = cfg, image

    @property
    def dim(self) -> int:
        return self.image.num_features

    @property
    def tokenizer(self):
        raise ConvirtError(no_text(self.cfg))

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        v = self.image(images)
        return F.normalize(v, dim=-1) if normalize else v

    def encode_dense(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds [B, F], cells [B, h, w, F]): no projection; each patch token (or CNN cell) L2-normalised."""
        pooled, grid = self.image.features(images)
        return F.normalize(pooled, dim=-1), F.normalize(grid.permute(0, 2, 3, 1), dim=-1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_grad_checkpointing(self.image.model, enable)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True):
        raise ConvirtError(no_text(self.cfg))

    def heads_state(self) -> dict[str, torch.Tensor]:
        return {}


def no_text(cfg: ModelConfig) -> str:
    return (f"model '{cfg.name}' is image-only (no text tower: an image-only pretraining run); text queries and "
            "prompts need a ConVIRT run (`convirt pretrain DATA --objective convirt`, optionally --image-init RUN)")


def create_model(
    spec: str | Path | ModelConfig,
    pretrained: bool = False,
    texts: Iterable[str] | None = None,
    image_weights: Path | None = None,
    text_weights: Path | None = None,
) -> ConVIRT | ImageModel:
    """A preset name / JSON / ModelConfig builds fresh towers; a saved model folder loads its weights."""
    if not isinstance(spec, ModelConfig) and is_run_dir(Path(spec)):
        return load_model(Path(spec))
    cfg = spec if isinstance(spec, ModelConfig) else get_model_config(spec)
    image = ImageTower(cfg.image, pretrained=pretrained, local_dir=image_weights)
    if cfg.text is None:
        return ImageModel(cfg, image)
    text = TextTower(cfg.text, pretrained=pretrained, local_dir=text_weights, texts=texts)
    return ConVIRT(cfg, image, text)


def load_model(path: Path, cfg: ModelConfig | None = None) -> ConVIRT | ImageModel:
    """Rebuild a saved model exactly (towers from their folders, heads from safetensors)."""
    path = Path(path)
    cfg = cfg or get_model_config(path)
    parts = ("image", "text", "heads.safetensors") if cfg.text is not None else ("image",)
    for part in parts:
        if not (path / part).exists():
            raise ConvirtError(f"{path} is not a complete saved model: '{part}' is missing; "
                               "pass a finished run directory (or --resume the run)")
    if cfg.text is None:
        return ImageModel(cfg, ImageTower(cfg.image, local_dir=path / "image"))
    model = ConVIRT(cfg, ImageTower(cfg.image, local_dir=path / "image"), TextTower(cfg.text, local_dir=path / "text"))
    heads = load_file(str(path / "heads.safetensors"))
    missing = set(model.heads_state()) - set(heads)
    if missing:
        raise ConvirtError(f"{path / 'heads.safetensors'}: missing {sorted(missing)[:3]}")
    model.load_state_dict(heads, strict=False)
    return model


def save_model(model: ConVIRT | ImageModel, path: Path) -> None:
    """Write the folder next to `path`, then swap it in, so a crash never leaves half a model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        model.image.save(tmp / "image")
        if model.has_text:
            model.text.save(tmp / "text")
            save_file({k: v.detach().cpu().contiguous() for k, v in model.heads_state().items()},
                      str(tmp / "heads.safetensors"))
        (tmp / RUN_MODEL_FILE).write_text(json.dumps(model.cfg.model_dump(mode="json"), indent=2))
        for item in tmp.iterdir():  # move parts in one by one: each rename is atomic
            dest = path / item.name
            path.mkdir(exist_ok=True)
            if dest.is_dir():
                old = dest.with_name(f".{dest.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dest, old)
                os.replace(item, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(item, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
