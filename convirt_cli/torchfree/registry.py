"""Model presets as data: `models/<name>.json` -> ModelConfig.

Like timm's registry (`list_models`, `create_model`) and open_clip's JSON configs: the file stem is
the preset name, and `get_model_config` also accepts a JSON path or a run directory (its model.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from convirt_cli.torchfree.config import RECIPE_KEYS, check_window
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.preprocess import Preprocess
from convirt_cli.torchfree.runs import RUN_MODEL_FILE, is_run_dir

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"


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
    # how high-bit-depth grey levels (DICOM, NIfTI, 16-bit PNG/TIFF) become 8-bit input: see torchfree/formats/window.py
    window: str = "auto"

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        return check_window(v)  # numpy-free: the registry is on the cold retrieve path

    @property
    def preprocess(self) -> Preprocess:
        """What the tower's input is made of (preprocess.py): every reader of pixels for it takes this."""
        c = self.in_chans
        return Preprocess(self.image_size, self.window, tuple(self.mean[:c]), tuple(self.std[:c]), c)


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


class DinoConfig(_Strict):
    """DINOv2's self-distillation recipe (its defaults unless a preset says otherwise; Oquab et al. 2023, as RAD-DINO
    continued it). Fractions of the run replace DINOv2's epoch counts, so a short run keeps the same shape."""

    prototypes: int = 65536
    head_hidden: int = 2048
    head_bottleneck: int = 256
    head_layers: int = 3
    ibot_separate_head: bool = False
    dino_weight: float = 1.0
    ibot_weight: float = 1.0  # 0: no iBOT (then any image tower works, a CNN included)
    koleo_weight: float = 0.1
    centering: Literal["sinkhorn", "center"] = "sinkhorn"  # DINOv2 | DINO's running centre
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    teacher_temp_warmup: float = 0.3  # fraction of the run (DINOv2: 30 of 100 epochs)
    momentum_start: float = 0.992
    momentum_end: float = 1.0
    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    jitter: tuple[float, float] = (0.6, 1.4)  # brightness and contrast factors (DINOv2's ColorJitter 0.4)
    jitter_p: float = Field(0.8, ge=0, le=1)
    solarize_p: float = Field(0.2, ge=0, le=1)  # the second global view's
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_probability: float = Field(0.5, ge=0, le=1)
    layer_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    weight_decay_end: float = 0.4  # cosine from --weight-decay to this
    freeze_last_layer_epochs: int = 1


class ModelConfig(_Strict):
    name: str = ""
    description: str = ""
    image: ImageTowerConfig
    text: TextTowerConfig | None = None  # None: an image-only model (DINO, SimCLR runs)
    projection: ProjectionConfig | None = Field(default_factory=ProjectionConfig)  # ConVIRT's heads; None: none
    loss: LossConfig = Field(default_factory=LossConfig)
    dino: DinoConfig | None = None  # --objective dino settings (None: DINOv2's defaults)
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
