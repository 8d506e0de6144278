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
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from convirt_cli.torchfree.errors import ConvirtError

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
    # the paper samples one report sentence per step; "report" feeds the whole text (easier, less noisy)
    text_view: Literal["sentence", "report"] = "sentence"
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


def _comma_list(value: Any) -> Any:
    """'a,b' (a flag or CONVIRT_* env var) -> ['a', 'b']; lists (from convirt.toml) pass through."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class FinetuneConfig(DataSettings):
    """`convirt finetune`: inits x label fractions x seeds, linear probe or full fine-tuning."""

    section: ClassVar[str] = "finetune"

    data: Path
    init: Annotated[list[str], NoDecode] = ["random"]  # run dirs, presets, `random`, `latest`
    model: str = "tiny"  # the preset `random` (and a preset init) builds
    pretrained: bool = False  # preset inits: hub weights (e.g. ImageNet); `random` never
    labels: Annotated[list[str], NoDecode] = []
    task: Literal["auto", "multilabel", "multiclass", "regression"] = "auto"
    missing: Annotated[list[str], NoDecode] = []  # extra values meaning "no label", e.g. -1 (uncertain)
    mode: Literal["linear", "full"] = "linear"
    label_fraction: Annotated[list[float], NoDecode] = [1.0]
    seeds: int = 1
    test_fraction: float = 0.2  # patients held out for test when there is no --split-col
    epochs: int = 20  # full: the most epochs; early stopping usually ends sooner
    patience: int = 5  # full: epochs without a better validation metric before stopping
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    image_size: int | None = None  # None: the init's
    metric: str | None = None  # table/plot/early-stopping metric; None: macro_auc | auc | r2
    bootstrap: int = 1000  # resamples for the test 95% intervals (0: none)
    out: Path | None = None
    name: str | None = None
    save_models: bool = True
    plot: bool = True

    _split = field_validator("init", "labels", "missing", "label_fraction", mode="before")(_comma_list)

    @field_validator("label_fraction")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"label fractions must lie in (0, 1], got {v}")
        return sorted(set(v))

    @field_validator("seeds", "epochs", "batch_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v


class ExportConfig(CommandSettings):
    """`convirt export`: a run -> ONNX graphs + tokenizer + preprocess/manifest (default RUN/onnx)."""

    section: ClassVar[str] = "export"

    run: Path | None = None  # None: the latest run in runs_dir
    onnx: bool = True
    out: Path | None = None
    fp16: bool = False
    int8_text: bool = False
    opset: int = 18
    seed: int = 0
    runs_dir: Path = Path("runs")


class ServeSettings(CommandSettings):
    """What embed / retrieve / evaluate / classify share: which model, which backend, where."""

    model: str | None = None  # run dir or ONNX export; None: the latest run (retrieve: the index's model)
    backend: Literal["auto", "onnx", "torch"] = "auto"
    device: Device = "auto"
    batch_size: int = 64
    threads: int | None = None  # onnxruntime / torch intra-op threads (None: all cores)
    runs_dir: Path = Path("runs")


class EmbedConfig(ServeSettings):
    section: ClassVar[str] = "embed"

    input: str
    out: Path
    kind: Literal["image", "text"] | None = None  # None: guessed from INPUT (tables: image)
    append: bool = False
    image_col: str = "image"
    text_col: str = "text"


class RetrieveConfig(ServeSettings):
    section: ClassVar[str] = "retrieve"

    query: list[str] = []
    image: list[Path] = []
    queries: str | None = None  # file of lines (texts or image paths), or "-" for stdin
    index: Path | None = None  # None: <runs_dir>/latest-index
    k: int = 10
    format: Literal["table", "jsonl", "csv", "paths", "html"] = "table"
    out: Path | None = None  # html: write here instead of stdout
    exact: bool = False  # ignore a FAISS index


class IndexBuildConfig(CommandSettings):
    section: ClassVar[str] = "index"

    index: Path | None = None
    faiss: bool = True
    kind: Literal["hnsw", "ivf", "flat"] = "hnsw"
    nlist: int | None = None
    m: int = 32
    ef_search: int = 128
    nprobe: int = 16
    runs_dir: Path = Path("runs")


class ZeroShotSettings(ServeSettings):
    """Labelled data for evaluate retrieval / classify."""

    data: Path
    label_col: str
    image_col: str = "image"
    ignore_label: list[str] = [""]
    prompts: Path | None = None  # JSON {label: [text, ...]}
    out: Path | None = None  # also write the JSON report here
    format: Literal["table", "json"] = "table"
    seed: int = 0


class EvaluateRetrievalConfig(ZeroShotSettings):
    section: ClassVar[str] = "evaluate"

    text_col: str = "text"
    queries_per_class: int = 5
    k: list[int] = [5, 10, 50]


class ClassifyConfig(ZeroShotSettings):
    section: ClassVar[str] = "classify"

    template: str = "{label}"
