"""Model presets as data: `models/<name>.json` -> ModelConfig.

Like timm's registry (`list_models`, `create_model`) and open_clip's JSON configs: the file stem is
the preset name, and `get_model_config` also accepts a JSON path or a run directory (its model.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from convirt_cli.torchfree.config import RECIPE_KEYS
from convirt_cli.torchfree.errors import ConvirtError

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"
RUN_MODEL_FILE = "model.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: fast CLI start


class ImageTowerConfig(_Strict):
    source: Literal["timm", "hf"] = "timm"
    name: str  # timm architecture, or a transformers vision model id / local folder
    kwargs: dict[str, Any] = Field(default_factory=dict)  # timm create_model kwargs
    hf_config: dict[str, Any] | None = None  # builds the hf tower offline when weights are not asked for
    image_size: int = 224
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])
    in_chans: int = 3


class TextTowerConfig(_Strict):
    source: Literal["hf", "scratch"] = "hf"
    name: str  # transformers model id or local folder ("scratch": a label only)
    hf_config: dict[str, Any] | None = None  # scratch: the architecture to build
    vocab_size: int = 2000  # scratch: WordPiece vocabulary learnt from the training texts
    pooling: Literal["max", "mean", "cls"] = "max"
    freeze_embeddings: bool = True
    freeze_layers: int = 0
    max_length: int = 128


class ProjectionConfig(_Strict):
    hidden: int = 1024
    dim: int = 512


class LossConfig(_Strict):
    tau: float = 0.1
    lam: float = 0.75


class ModelConfig(_Strict):
    name: str = ""
    description: str = ""
    image: ImageTowerConfig
    text: TextTowerConfig
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    # the recipe that makes this preset learn (lr, text view, steps...): ranks above pretrain's built-in
    # defaults and below convirt.toml, CONVIRT_* and flags (config.apply_recipe)
    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("train")
    @classmethod
    def _recipe_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(RECIPE_KEYS))
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown} (allowed: {', '.join(RECIPE_KEYS)})")
        return v


def list_models() -> list[str]:
    """Names of the bundled presets, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def _load_json(path: Path, name: str) -> ModelConfig:
    try:
        data = json.loads(path.read_text())
        data.setdefault("name", name)
        return ModelConfig.model_validate(data)
    except json.JSONDecodeError as e:
        raise ConvirtError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix the preset file") from None
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ConvirtError(f"{path}: field '{loc}': {first['msg']}; fix the preset file") from None


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / RUN_MODEL_FILE).is_file()


def get_model_config(spec: str | Path) -> ModelConfig:
    """A preset name, a preset JSON path, or a run directory -> its ModelConfig."""
    path = Path(spec)
    if is_run_dir(path):
        return _load_json(path / RUN_MODEL_FILE, path.name)
    if path.suffix == ".json" and path.is_file():
        return _load_json(path, path.stem)
    preset = PRESET_DIR / f"{spec}.json"
    if preset.is_file():
        return _load_json(preset, str(spec))
    raise ConvirtError(
        f"unknown model '{spec}': not a preset ({', '.join(list_models())}), a preset .json file, "
        "or a run directory with model.json; see `convirt models`"
    )


def with_overrides(cfg: ModelConfig, **overrides: Any) -> ModelConfig:
    """Apply dotted overrides such as image.image_size=160; None values are ignored (unset flags)."""
    data = cfg.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[leaf] = value
    return ModelConfig.model_validate(data)
