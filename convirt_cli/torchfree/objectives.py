"""The pretraining objectives a run may name: a registry you can list, like timm's `register_model` / `list_models`.

What the run needs to know before any model exists lives here, torch-free, so the config validates `--objective`
and the data is read (with or without reports) without importing torch: the name, whether rows need text,
whether a batch splits into GradCache chunks (--accum-steps), the preset it trains when --model is unset. The
objective's behaviour is a class on the torch side (convirt_cli/torch/objectives, checked against the Objective
base there when first loaded), named by "module:Class" and imported only when a run builds it.

A new objective is one module plus one `register_objective` call (tests/test_objectives.py adds one that way).
"""

from __future__ import annotations

from dataclasses import dataclass

from convirt_cli.torchfree.errors import ConvirtError


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str  # --objective NAME
    target: str | type  # "package.module:Class" (imported when a run builds it), or the class itself
    needs_text: bool  # rows without a report are skipped before training
    gradcache: bool = False  # splits a contrastive batch into --accum-steps chunks (Objective.loss_and_backward)
    default_model: str | None = None  # the preset trained when --model is unset (None: the config's default)
    about: str = ""  # one line for `convirt pretrain --help` and the README


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add (or replace) an objective; its name is then a valid --objective everywhere."""
    if not spec.name.isidentifier():
        raise ValueError(f"objective name {spec.name!r}: a plain identifier, please (it becomes --objective NAME)")
    _REGISTRY[spec.name] = spec
    return spec


def list_objectives() -> list[str]:
    return sorted(_REGISTRY)


def get_objective(name: str) -> ObjectiveSpec:
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ConvirtError(f"--objective {name}: not a registered objective (registered: {', '.join(list_objectives())})")
    return spec


def check_objective(name: str) -> str:
    """The config's validator: a registered name, else ValueError listing them (the CLI prefixes the flag)."""
    if name not in _REGISTRY:
        raise ValueError(f"not a registered objective (registered: {', '.join(list_objectives())})")
    return name


_PKG = "convirt_cli.torch.objectives"
register_objective(ObjectiveSpec("convirt", f"{_PKG}.convirt:ConVIRTObjective", needs_text=True, gradcache=True,
                                 about="ConVIRT: images + reports, bidirectional InfoNCE"))
register_objective(ObjectiveSpec("dino", f"{_PKG}.dino:DINOObjective", needs_text=False, default_model="dino-tiny",
                                 about="RAD-DINO: DINOv2 self-distillation on images alone"))
register_objective(ObjectiveSpec("simclr", f"{_PKG}.simclr:SimCLRObjective", needs_text=False, gradcache=True,
                                 about="SimCLR: the image-only contrastive baseline, NT-Xent"))
