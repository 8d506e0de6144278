"""One typed config per command: CLI flags > CONVIRT_* env vars > convirt.toml > defaults.

convirt.toml may hold shared top-level keys and one table per command:

    device = "cpu"
    [pretrain]
    epochs = 20
    batch_size = 64

Commands pass only the flags the user set (None = unset), so defaults never override a file or env.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from convirt_cli.errors import ConvirtError

Device = Literal["auto", "cpu", "cuda"]


def settings_file() -> Path:
    return Path(os.environ.get("CONVIRT_CONFIG", "convirt.toml"))


class _TomlSection(PydanticBaseSettingsSource):
    """Top-level keys the command knows, then its own [section] (which must only hold known keys)."""

    def __init__(self, settings_cls: type[BaseSettings], section: str):
        super().__init__(settings_cls)
        self.section = section

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ does the work

    def __call__(self) -> dict[str, Any]:
        path = settings_file()
        if not path.is_file():
            return {}
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConvirtError(f"{path}: not valid TOML ({e})") from None
        fields = self.settings_cls.model_fields
        out = {k: v for k, v in data.items() if k in fields and not isinstance(v, dict)}
        table = data.get(self.section, {})
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise ConvirtError(f"{path}: [{self.section}] has unknown keys {unknown}; "
                               f"see `convirt {self.section} --help`")
        return out | table


class CommandSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVIRT_", extra="forbid", validate_default=True)
    section: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings, env_settings, _TomlSection(settings_cls, cls.section))

    @classmethod
    def resolve(cls, **flags: Any):
        """Build from the flags the user set; a bad value becomes one line naming the setting."""
        try:
            return cls(**{k: v for k, v in flags.items() if v is not None})
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(x) for x in err["loc"])
            raise ConvirtError(f"setting '{key}' (flag --{key.replace('_', '-')}, env CONVIRT_{key.upper()}, "
                               f"or {settings_file()}): {err['msg']}") from None


class DataSettings(CommandSettings):
    """How rows are read and split (shared by pretrain and finetune)."""

    image_col: str = "image"
    split_col: str | None = None
    patient_col: str | None = None
    val_fraction: float = 0.1
    strict: bool = False
    num_workers: int = 0
    device: Device = "auto"
    seed: int = 0
    runs_dir: Path = Path("runs")


class PretrainConfig(DataSettings):
    section: ClassVar[str] = "pretrain"

    data: Path
    model: str = "tiny"
    pretrained: bool = False
    image_weights: Path | None = None
    text_weights: Path | None = None
    text_col: str = "text"
    out: Path | None = None
    name: str | None = None
    resume: bool = False
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-4  # the paper's Adam learning rate
    weight_decay: float = 1e-6
    schedule: Literal["cosine", "plateau"] = "cosine"
    warmup_steps: int | None = None  # None: 5% of the run
    grad_clip: float = 1.0
    image_size: int | None = None  # None: the preset's
    tau: float | None = None
    lam: float | None = None
    checkpoint_every: int = 0  # steps; 0: at the end of every epoch
    plot: bool = True
