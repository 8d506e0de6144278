"""One typed config per command: plain pydantic models, validated up front, that the library takes as is.

Only the CLI (convirt_cli.cli.settings) fills them from flags, CONVIRT_* variables and convirt.toml; the
library never reads the environment. Every numeric setting carries its bounds here, so a bad value is one
line naming the flag before any work starts. A config remembers where each value came from
(`sources()`: flag, env, toml, preset, run, default), and `pretrain` writes that beside the values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from convirt_cli.torchfree.objectives import check_objective

Device = Literal["auto", "cpu", "cuda"]
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
ImageSize = Annotated[int, Field(ge=32, le=4096)]
TEXT_VIEWS = ("sentence", "span", "report")


def _comma_list(value: Any) -> Any:
    """'a,b' (a flag or CONVIRT_* env var) -> ['a', 'b']; lists (from convirt.toml) pass through."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def check_sections(value: Any) -> list[str]:
    """Report section headings as `--sections findings,impression` names them: words, lower-cased."""
    out = [" ".join(str(v).lower().split()) for v in _comma_list(value)]
    bad = [v for v in out if not v.replace(" ", "").isalpha()]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a report heading (words such as findings, impression)")
    return list(dict.fromkeys(out))


def check_where(value: Any) -> Any:
    """--where COL=V1,V2 or COL!=V1,V2 (repeatable; CONVIRT_WHERE / convirt.toml may join several with ';')."""
    from convirt_cli.torchfree.data.where import where_items

    return where_items(value)


def check_window(value: str) -> str:
    from convirt_cli.torchfree.formats.window import parse_window

    parse_window(value)
    return value.strip()


def check_slices(value: str) -> str:
    from convirt_cli.torchfree.formats.slices import parse_slices

    parse_slices(value)
    return value.strip()


def check_name(value: str | None) -> str | None:
    """A run / output name is one folder name inside its parent: never a path that leaves it."""
    if value is None:
        return value
    if not value or value in (".", "..") or "/" in value or "\\" in value or value.startswith("."):
        raise ValueError(f"'{value}' is not a plain folder name (no '/', '..' or leading '.'); "
                         "use --out DIR to write somewhere else")
    return value


class Config(BaseModel):
    """Base of every command's config: unknown keys are errors; values remember their source."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: fast CLI start
    section: ClassVar[str] = ""
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def sources(self) -> dict[str, str]:
        """Where each value came from: flag / env / toml / preset / run / default ("given" for library callers)."""
        return {k: self._sources.get(k, "given" if k in self.model_fields_set else "default")
                for k in type(self).model_fields}

    def with_sources(self, sources: dict[str, str]) -> Config:
        self._sources = dict(sources)
        return self

    def updated(self, values: dict[str, Any], source: str) -> Config:
        """A re-validated copy with `values` applied, each recorded as coming from `source`."""
        merged = self.model_dump() | values
        new = type(self).model_validate({k: v for k, v in merged.items() if k in self.model_fields_set or k in values})
        return new.with_sources(self.sources() | {k: source for k in values})


class DataSettings(Config):
    """How rows are read and split (shared by pretrain and finetune)."""

    image_col: str = "image"
    split_col: str | None = None
    patient_col: str | None = None
    val_fraction: Fraction = 0.1
    encoding: str = "auto"  # of CSV/JSONL tables: auto = UTF-8 (BOM-aware), UTF-16 by BOM, else cp1252
    strict: bool = False
    where: list[str] = []  # COL=V1,V2: keep rows whose COL is one of the values (frontal views: view=PA,AP)
    join: list[Path] = []  # tables joined to the rows on their shared columns (MIMIC-CXR's per-study labels)
    num_workers: NonNegative | None = None  # DataLoader workers; None: sized to the machine (train/data.py)
    device: Device = "auto"
    seed: NonNegative = 0
    runs_dir: Path = Path("runs")
    _where = field_validator("where", mode="before")(classmethod(lambda cls, v: check_where(v)))
    _join = field_validator("join", mode="before")(classmethod(lambda cls, v: _comma_list(v)))


class PretrainConfig(DataSettings):
    """`convirt pretrain`. Values left unset take the preset's `train` recipe, then these defaults."""

    section: ClassVar[str] = "pretrain"

    data: Path | None = None  # required, except with --resume (the run's own config.json names it)
    # a registered objective (torchfree/objectives.py): convirt (image-report pairs), dino (RAD-DINO's DINOv2 on
    # images alone), simclr (the image-only baseline), or one a plugin registered
    objective: str = "convirt"
    model: str = "tiny"  # unset: the objective's default preset (dino: dino-tiny), else this
    pretrained: bool = False
    image_weights: Path | None = None
    text_weights: Path | None = None
    image_init: Path | None = None  # start the image tower from another run's (e.g. a DINO run, then ConVIRT)
    text_col: str = "text"
    # sentence: the paper's one random sentence per step; report: the whole text; span: a random run of
    # consecutive sentences covering at least half of the report (between the two)
    text_view: Literal["sentence", "span", "report"] = "sentence"
    sections: list[str] = []  # keep these headed report sections (e.g. findings, impression); []: the whole text
    out: Path | None = None
    name: str | None = None
    resume: bool = False
    wait: bool = False  # another writer holds the output folder: wait for it (else stop, naming its pid)
    dry_run: bool = False  # read, check and split the data, print the recipe; write nothing
    epochs: Positive = 10
    min_steps: NonNegative = 0  # small data sets get more epochs, up to this many steps
    max_steps: Positive | None = None
    batch_size: Annotated[int, Field(ge=2)] = 32  # a contrastive batch needs at least one negative
    lr: Annotated[float, Field(gt=0, le=1)] = 1e-4  # the paper's Adam learning rate
    weight_decay: Annotated[float, Field(ge=0)] = 1e-6
    schedule: Literal["cosine", "plateau"] = "cosine"
    warmup_steps: NonNegative | None = None  # None: 5% of the run
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    image_size: ImageSize | None = None  # None: the preset's
    # high-bit-depth grey levels -> 8 bits: auto | minmax | percentile:LO,HI | fixed:C,W | a named CT window such as
    # lung (None: the preset's); carried by the run and its export
    window: str | None = None
    slices: str = "middle"  # volumes (NIfTI): which axial slices become images: middle | all | every:N
    tau: Annotated[float, Field(gt=0, le=10)] | None = None
    lam: Annotated[float, Field(ge=0, le=1)] | None = None
    checkpoint_every: NonNegative = 0  # steps; 0: at the end of every epoch
    plot: bool = True
    # scale: a contrastive batch of accum_steps x batch_size rows (GradCache), activation recomputation, precision
    accum_steps: Positive = 1
    grad_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    # None (auto): on for CNN image towers on CUDA (2.0x samples/s for ResNet-50 + BERT-base at batch 256 on an H200,
    # benchmarks/RESULTS.md), off on CPU (slower there) and for ViTs (one convolution)
    channels_last: bool | None = None
    compile: bool = False

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))
    _window = field_validator("window")(classmethod(lambda cls, v: v if v is None else check_window(v)))
    _slices = field_validator("slices")(classmethod(lambda cls, v: check_slices(v)))
    _sections = field_validator("sections", mode="before")(classmethod(lambda cls, v: check_sections(v)))
    # looked up when a config is built: an objective registered at run time (a plugin, a test) counts
    _objective = field_validator("objective")(classmethod(lambda cls, v: check_objective(v)))


class ShardConfig(DataSettings):
    """`convirt shard`: rows -> WebDataset tar shards, validated, split and (optionally) downscaled once."""

    section: ClassVar[str] = "shard"

    data: Path
    out: Path
    wait: bool = False  # another writer holds the output folder: wait for it (else stop, naming its pid)
    text_col: str | None = "text"  # None: image-only shards (for --objective dino / simclr)
    sections: list[str] = []  # as pretrain's: the shards store only these report sections
    per_shard: Positive = 1000
    max_side: Annotated[int, Field(ge=16)] | None = None  # downscale larger images once (later epochs skip it)
    window: str = "auto"  # DICOM / high-bit images are stored as windowed 8-bit PNG
    slices: str = "middle"  # volumes: which axial slices become samples (as pretrain's)
    workers: Positive | None = None  # processes decoding and encoding images; None: one per CPU core
    _window = field_validator("window")(classmethod(lambda cls, v: check_window(v)))
    _slices = field_validator("slices")(classmethod(lambda cls, v: check_slices(v)))
    _sections = field_validator("sections", mode="before")(classmethod(lambda cls, v: check_sections(v)))


# what a preset's `train` section may set: the recipe, not the data or where things go
RECIPE_KEYS = ("objective", "text_view", "epochs", "min_steps", "max_steps", "batch_size", "lr", "weight_decay", "schedule",
               "warmup_steps", "grad_clip", "image_size", "window", "tau", "lam")


def apply_recipe(cfg: PretrainConfig, recipe: dict[str, Any], source: str) -> PretrainConfig:
    """Fill the values the user left unset from a preset's recipe (it ranks above the built-in defaults only).

    A user who sets --epochs (or --max-steps) has chosen the run's length: the recipe's min_steps then stays out.
    """
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"train keys {unknown} are not recipe settings (allowed: {', '.join(RECIPE_KEYS)})")
    chosen = cfg.model_fields_set
    take = {k: v for k, v in recipe.items() if k not in chosen}
    if {"epochs", "max_steps"} & chosen and "min_steps" not in chosen:
        take.pop("min_steps", None)
    return cfg.updated(take, source) if take else cfg


def _positive_ints(v: list[int]) -> list[int]:
    if not v or any(k < 1 for k in v):
        raise ValueError(f"every k must be at least 1, got {v}")
    return v


class FinetuneConfig(DataSettings):
    """`convirt finetune`: inits x label fractions x seeds, linear probe or full fine-tuning."""

    section: ClassVar[str] = "finetune"

    data: Path
    init: Annotated[list[str], Field(min_length=1)] = ["random"]  # run dirs, presets, `random`, `latest`
    model: str = "tiny"  # what `random` and a preset init build; unset, `random` is the first run init's own tower
    pretrained: bool = False  # preset inits: hub weights (e.g. ImageNet); `random` never
    labels: list[str] = []
    task: Literal["auto", "multilabel", "multiclass", "regression", "segmentation"] = "auto"
    mask_col: str = "mask"  # segmentation: column of binary mask images (relative to the table, like images)
    missing: list[str] = []  # extra values meaning "no label", e.g. -1 (uncertain)
    mode: Literal["linear", "full"] = "linear"
    label_fraction: list[float] = [1.0]
    seeds: Positive = 1
    test_fraction: Fraction = 0.2  # patients held out for test when there is no --split-col
    epochs: Positive = 20  # full: the most epochs; early stopping usually ends sooner
    patience: Positive = 5  # full: epochs without a better validation metric before stopping
    batch_size: Positive = 32
    lr: Annotated[float, Field(gt=0, le=1)] = 1e-4
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    # high-bit-depth grey levels -> 8 bits, for preset inits; None: each init's own. A run init reads pixels with
    # its own window (a different one is an error): its classifier and that classifier's export then see the same
    window: str | None = None
    image_size: ImageSize | None = None  # None: the init's
    metric: str | None = None  # table/plot/early-stopping metric; None: macro_auc | auc | r2
    bootstrap: NonNegative = 1000  # resamples for the test 95% intervals (0: none)
    out: Path | None = None
    name: str | None = None
    wait: bool = False  # another writer holds the output folder: wait for it (else stop, naming its pid)
    save_models: bool = True
    dry_run: bool = False  # read, label and split the data, check the inits; write nothing
    plot: bool = True

    _split = field_validator("init", "labels", "missing", "label_fraction", mode="before")(
        classmethod(lambda cls, v: _comma_list(v)))
    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))
    _window = field_validator("window")(classmethod(lambda cls, v: v if v is None else check_window(v)))

    @field_validator("label_fraction")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"label fractions must lie in (0, 1], got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _held_out(self) -> FinetuneConfig:
        if self.split_col is None and self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} leave no "
                             "training rows; keep their sum below 1")
        return self


class ExportConfig(Config):
    """`convirt export`: a run -> ONNX graphs + tokenizer + preprocess/manifest (default RUN/onnx)."""

    section: ClassVar[str] = "export"

    run: Path | None = None  # None: the latest run in runs_dir
    onnx: bool = True
    out: Path | None = None
    wait: bool = False  # another writer holds the output folder: wait for it (else stop, naming its pid)
    fp16: bool = False
    int8_text: bool = False
    int8_image: bool = False
    opset: Annotated[int, Field(ge=17, le=23)] = 18
    seed: NonNegative = 0
    runs_dir: Path = Path("runs")


class ServeSettings(Config):
    """What embed / retrieve / evaluate / classify share: which model, which backend, where."""

    model: str | None = None  # run dir or ONNX export; None: the latest run (retrieve: the index's model)
    backend: Literal["auto", "onnx", "torch"] = "auto"
    device: Device = "auto"
    batch_size: Positive = 64
    threads: Positive | None = None  # onnxruntime / torch intra-op threads (None: all cores)
    workers: Positive | None = None  # image decoding workers (None: one per core; serve/decode.py)
    runs_dir: Path = Path("runs")


class EmbedConfig(ServeSettings):
    section: ClassVar[str] = "embed"

    input: str
    out: Path
    kind: Literal["image", "text"] | None = None  # None: guessed from INPUT (tables: image)
    append: bool = False
    wait: bool = False  # another writer holds the output folder: wait for it (else stop, naming its pid)
    image_col: str = "image"
    text_col: str = "text"
    slices: str = "middle"  # volumes: which axial slices become items (each with its slice index)
    columns: list[str] = []  # metadata columns each item keeps, for `retrieve --where` (only these: no patient ids)
    # one of N contiguous parts of INPUT (a job array, several GPUs or machines); `index merge` joins them
    parts: Positive = 1
    part: NonNegative = 0
    _slices = field_validator("slices")(classmethod(lambda cls, v: check_slices(v)))
    _columns = field_validator("columns", mode="before")(classmethod(lambda cls, v: _comma_list(v)))

    @model_validator(mode="after")
    def _part(self) -> EmbedConfig:
        if self.part >= self.parts:
            raise ValueError(f"--part {self.part} is not one of 0..{self.parts - 1} (--parts {self.parts})")
        if self.parts > 1 and self.append:
            raise ValueError("--append with --parts: embed each part into its own --out, then `convirt index merge`")
        return self


class RetrieveConfig(ServeSettings):
    section: ClassVar[str] = "retrieve"

    query: list[str] = []
    image: list[Path] = []
    like: list[NonNegative] = []  # item ids: more like this item (itself left out)
    queries: str | None = None  # file of lines (texts or image paths), or "-" for stdin
    index: Path | None = None  # None: <runs_dir>/latest-index
    k: Positive = 10
    offset: NonNegative = 0  # skip this many hits: a next page
    where: list[str] = []  # COL=V1,V2 / COL!=V on the items' stored columns (`embed --columns`)
    format: Literal["table", "jsonl", "csv", "paths", "html"] = "table"
    out: Path | None = None  # write the results here (any format) instead of stdout
    null: bool = False  # paths: NUL-terminated, names exactly as they are (as find -print0)
    exact: bool = False  # ignore a FAISS index
    slices: str = "middle"  # an --image volume: which axial slices are queries
    _slices = field_validator("slices")(classmethod(lambda cls, v: check_slices(v)))
    _where = field_validator("where", mode="before")(classmethod(lambda cls, v: check_where(v)))


def check_origin(value: str) -> str:
    """A --cors-origin: scheme://host[:port], as a browser sends it in Origin (no path, no wildcard)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query \
            or "*" in value or "@" in parts.netloc:
        raise ValueError(f"'{value}' is not an origin: give scheme://host[:port], e.g. https://ris.example.org")
    return f"{parts.scheme}://{parts.netloc}".lower()


class ServeConfig(Config):
    """`convirt serve`: the search page and JSON API over indexes of one model, from its ONNX export."""

    section: ClassVar[str] = "serve"

    indexes: list[str] = []  # index folders, or NAME=DIR; none: <runs_dir>/latest-index
    model: str | None = None  # ONNX export, or a run with one (default: the model the first index names)
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8765  # 0: a free port (printed)
    token: str | None = None  # bearer token, checked on every route but /api/health (CONVIRT_TOKEN keeps it off ps)
    no_auth: bool = False  # serve a non-loopback address without a token (a warning says so)
    cors_origin: list[str] = []  # pages of these origins may call the API from a browser
    max_upload_mb: Annotated[float, Field(gt=0, le=1024)] = 20.0
    drain_s: Annotated[float, Field(ge=0, le=3600)] = 30.0  # on SIGTERM / Ctrl-C: finish requests in flight this long
    device: Device = "auto"
    threads: Positive | None = None
    log: bool = True  # one access-log line per request on stderr (never a query's text or a body)
    runs_dir: Path = Path("runs")
    _cors = field_validator("cors_origin", mode="before")(classmethod(lambda cls, v: _comma_list(v)))

    @field_validator("cors_origin")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        return [check_origin(o) for o in v]

    @model_validator(mode="after")
    def _safe(self) -> ServeConfig:
        from convirt_cli.torchfree.serve.web.guard import is_loopback

        if self.token is not None and len(self.token) < 16:
            raise ValueError("--token is shorter than 16 characters: use a long random one, e.g. "
                             "`python -c 'import secrets; print(secrets.token_urlsafe())'`")
        if self.token is not None and self.no_auth:
            raise ValueError("--token and --no-auth contradict each other: give one")
        if not is_loopback(self.host) and self.token is None and not self.no_auth:
            raise ValueError(f"--host {self.host} is reachable from other machines: pass --token T (or set "
                             "CONVIRT_TOKEN) so only holders of the token search, or --no-auth to serve anyone")
        return self


def check_point(value: str | None) -> str | None:
    """--at X,Y: a point in an image's pixels."""
    if value is None:
        return value
    parts = value.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"'{value}' is not a point X,Y in the image's pixels (e.g. 120,200)") from None
    return value.strip()


class ExplainConfig(ServeSettings):
    """`convirt explain IMAGE... --query TEXT`: where in each image a phrase matches (similarity maps)."""

    section: ClassVar[str] = "explain"

    images: Annotated[list[str], Field(min_length=1)]  # images, folders or tables (as embed reads them)
    query: list[str] = []  # phrases; none (and no like/at): the first three principal components of the patches
    like: Path | None = None  # another image: how like its pooled embedding each patch is
    at: str | None = None  # X,Y in each image's pixels: how like that patch each patch is
    out: Path = Path("explain")  # folder for the maps
    format: Literal["png", "html", "jsonl", "npy"] = "png"
    sigma: Annotated[float, Field(ge=0, le=10)] = 1.5  # Gaussian smoothing in cells (BioViL's 1.5)
    image_col: str = "image"
    slices: str = "middle"
    batch_size: Positive = 16
    _slices = field_validator("slices")(classmethod(lambda cls, v: check_slices(v)))
    _at = field_validator("at")(classmethod(lambda cls, v: check_point(v)))


class IndexBuildConfig(Config):
    section: ClassVar[str] = "index"

    index: Path | None = None
    faiss: bool = True
    index_type: Literal["auto", "hnsw", "ivf", "ivfpq", "flat"] = "auto"
    nlist: Positive | None = None
    m: Annotated[int, Field(ge=2)] = 32
    ef_search: Positive = 128
    nprobe: Positive = 16
    runs_dir: Path = Path("runs")
    wait: bool = False  # another writer holds the output folder: wait for it (else stop, naming its pid)


class IndexMergeConfig(Config):
    section: ClassVar[str] = "index"

    parts: list[Path]
    out: Path
    wait: bool = False  # another writer holds the output folder: wait for it (else stop, naming its pid)


class ZeroShotSettings(ServeSettings):
    """Labelled data for evaluate retrieval / classify."""

    data: Path
    label_col: str
    image_col: str = "image"
    ignore_label: list[str] = [""]
    where: list[str] = []  # COL=V1,V2: evaluate on those rows only (frontal views: view=PA,AP)
    join: list[Path] = []  # as DataSettings.join
    prompts: Path | None = None  # JSON {label: [text, ...]}
    out: Path | None = None  # also write the JSON report here
    format: Literal["table", "json"] = "table"
    seed: NonNegative = 0
    _where = field_validator("where", mode="before")(classmethod(lambda cls, v: check_where(v)))
    _join = field_validator("join", mode="before")(classmethod(lambda cls, v: _comma_list(v)))


class EvaluateRetrievalConfig(ZeroShotSettings):
    section: ClassVar[str] = "evaluate"

    text_col: str = "text"
    queries_per_class: Positive = 5
    k: list[int] = [5, 10, 50]

    _k = field_validator("k")(classmethod(lambda cls, v: _positive_ints(v)))


class EvaluateGroundingConfig(ServeSettings):
    """`convirt evaluate grounding DATA`: similarity maps of phrases scored against masks or boxes (MS-CXR)."""

    section: ClassVar[str] = "evaluate"

    data: Path
    text_col: str = "text"  # the phrase of each row (MS-CXR: label_text)
    mask_col: str | None = None  # a mask image per row (relative to the table, like images)
    box_cols: list[str] = []  # x,y,w,h in the image's pixels (MS-CXR: x,y,w,h)
    finding_col: str | None = None  # what per_finding groups by; None: `category` when the table has it, else phrase
    image_col: str = "image"
    sigma: Annotated[float, Field(ge=0, le=10)] = 1.5
    bootstrap: NonNegative = 1000
    seed: NonNegative = 0
    out: Path | None = None
    format: Literal["table", "json"] = "table"
    batch_size: Positive = 16
    _box = field_validator("box_cols", mode="before")(classmethod(lambda cls, v: _comma_list(v)))

    @model_validator(mode="after")
    def _region(self) -> EvaluateGroundingConfig:
        if bool(self.mask_col) == bool(self.box_cols):
            raise ValueError("give the regions as one of --mask-col COL or --box-cols x,y,w,h")
        if self.box_cols and len(self.box_cols) != 4:
            raise ValueError(f"--box-cols {','.join(self.box_cols)}: name four columns, x,y,w,h")
        return self


class ClassifyConfig(ZeroShotSettings):
    section: ClassVar[str] = "classify"

    template: str = "{label}"
