"""RAD-DINO's objective (Perez-Garcia et al. 2024): DINOv2 on images alone. DINO self-distillation on the CLS token
over multi-crop views + iBOT on block-masked patches of the global views + KoLeo on the student's CLS tokens; the
teacher is an EMA of the student (cosine momentum), its outputs centred (Sinkhorn-Knopp, or DINO's running centre)
and sharpened with a temperature warmed up from 0.04 to 0.07; the prototypes stay frozen for the first epoch.

Every setting comes from the preset's `dino` section (registry.DinoConfig, DINOv2's defaults unless it says so).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from convirt_cli.torch.data.dataset import Collate, make_dataset
from convirt_cli.torch.data.multicrop import MultiCropParams, batch_masks, multicrop
from convirt_cli.torch.data.transforms import to_model_input
from convirt_cli.torch.dino import HEAD_FILE, DINOHead, Student, ema_update, make_teacher, patch_size
from convirt_cli.torch.losses.centering import centered_probs, sinkhorn_knopp, updated_center
from convirt_cli.torch.losses.collapse import entropy, prototypes_in_use
from convirt_cli.torch.losses.dino_clstoken import dino_loss
from convirt_cli.torch.losses.dinov2 import MaskedPatches, dinov2_loss
from convirt_cli.torch.model import ImageModel, save_model
from convirt_cli.torch.objectives import Objective, Schedule
from convirt_cli.torch.train.device import autocast
from convirt_cli.torch.train.distributed import Dist, all_reduce_mean
from convirt_cli.torch.train.param_groups import vit_param_groups
from convirt_cli.torch.train.schedule import cosine_ramp, linear_warmup
from convirt_cli.torchfree.config import PretrainConfig
from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.registry import DinoConfig


def released_head(cfg: PretrainConfig, image_weights: Path | None) -> Path | None:
    """The DINO head shipped beside a backbone (microsoft/rad-dino's dino_head.safetensors): in --image-weights DIR,
    or with --pretrained from the hub next to the weights. None: a fresh head."""
    if image_weights is not None and (Path(image_weights) / HEAD_FILE).is_file():
        return Path(image_weights) / HEAD_FILE
    if cfg.pretrained:
        from convirt_cli.torchfree.registry import get_model_config

        image = get_model_config(cfg.model).image
        if image.source == "hf":
            try:
                from huggingface_hub import hf_hub_download

                return Path(hf_hub_download(image.name, HEAD_FILE))
            except Exception:  # noqa: BLE001 - no released head (or offline): the head starts fresh
                return None
    return None


def crop_params(d: DinoConfig) -> MultiCropParams:
    """The preset's multi-crop: sizes, scales and the grey-level augmentations."""
    return MultiCropParams(d.global_size, d.local_size, d.n_local, tuple(d.global_scale), tuple(d.local_scale),
                           tuple(d.jitter), d.jitter_p, solarize_p=d.solarize_p)


class DINOObjective(Objective):
    loss_label = "DINO + iBOT + KoLeo loss"  # no collapse guard: collapse shows in the teacher's entropy

    def __init__(self, model: ImageModel, cfg: PretrainConfig, device: torch.device, dist: Dist):
        from convirt_cli.torch.dino import load_head

        super().__init__(model, cfg, device, dist)
        d: DinoConfig = model.cfg.dino or DinoConfig()
        self.d = d
        tower = model.image
        dim = tower.num_features

        def head() -> DINOHead:
            return DINOHead(dim, d.prototypes, d.head_hidden, d.head_bottleneck, d.head_layers)

        dino_head = head()
        image_weights = cfg.image_init / "image" if cfg.image_init is not None else cfg.image_weights
        head_weights = None if cfg.resume else released_head(cfg, image_weights)  # a resumed run has its own
        if head_weights is not None and head_weights.is_file():
            load_head(dino_head, head_weights)  # continue from a released head (microsoft/rad-dino)
        use_patches = d.ibot_weight > 0
        self.student = Student(tower, dino_head, head() if use_patches and d.ibot_separate_head else None, use_patches)
        self.teacher = make_teacher(self.student)
        self.module = torch.nn.ModuleDict({"student": self.student, "teacher": self.teacher})
        # classic centring keeps one running centre for the [CLS] outputs and one for the patches (iBOT's)
        self.module.register_buffer("center", torch.zeros(1, d.prototypes))
        self.module.register_buffer("patch_center", torch.zeros(1, d.prototypes))
        self.crops = crop_params(d)
        self.patch = patch_size(tower) if use_patches else 0
        if use_patches and (d.global_size % self.patch or d.local_size % self.patch):
            from convirt_cli.torchfree.errors import ConvirtError

            raise ConvirtError(f"crop sizes {d.global_size}/{d.local_size} px are not multiples of the ViT's patch "
                               f"size {self.patch}; set the preset's dino.global_size / local_size")
        self.collate = Collate(None)
        self._schedules: dict[str, Schedule] = {}  # set by the loop (schedules)
        self.history: list[dict] = []

    # ---------------------------------------------------------------- data
    def dataset(self, rows: list[Row], train: bool, seed: int):
        size = max(self.d.global_size, self.model.cfg.image.image_size)  # crops resample from this decode
        return make_dataset(rows, size, text_view="report", seed=seed, with_text=False,
                            window=self.model.cfg.image.window, train=train, rank=self.dist.rank, world=self.dist.world)

    def size_warning(self, min_side: int | None) -> str | None:
        """Images smaller than the global crops are upsampled into them: say so once (the crops learn little)."""
        if min_side is not None and min_side < self.d.global_size:
            return (f"some images are smaller than the {self.d.global_size} px global crops (the smallest: {min_side} "
                    "px); they are upsampled. A preset with smaller crops (dino-tiny: 64 px) suits them better")
        return None

    # ---------------------------------------------------------------- optimisation
    def trainable(self) -> torch.nn.Module:
        return self.student

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """DINOv2's groups: layer-wise lr decay, and the prototypes (the heads' last layers) in groups of their own
        for the last_layer_lr schedule."""
        depth = len(getattr(self.model.image.model, "blocks", [])) or \
            int(getattr(getattr(self.model.image.model, "config", None), "num_hidden_layers", 0))
        heads = {id(h): h for h in (self.student.dino_head, self.student.ibot_head) if h}.values()
        last = {id(p) for h in heads for p in h.last_layer_params()}
        return vit_param_groups(self.student, lr, weight_decay, depth, self.d.layer_decay if depth else 1.0,
                                self.d.patch_embed_lr_mult, last_layer=last)

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, Schedule]:
        """DINOv2's build_schedulers, over this run's steps: weight decay (cosine up), the prototypes' lr (0 for the
        first epoch(s): DINO's guard against early collapse), the teacher's temperature (warmed up) and EMA momentum
        (cosine up to 1)."""
        d, wd0 = self.d, self.cfg.weight_decay
        warm, frozen = int(d.teacher_temp_warmup * total_steps), d.freeze_last_layer_epochs * steps_per_epoch
        self._schedules = {
            "weight_decay": lambda s: cosine_ramp(s, total_steps, wd0, d.weight_decay_end),
            "last_layer_lr": lambda s: 0.0 if s < frozen else 1.0,
            "teacher_temp": lambda s: linear_warmup(s, warm, d.warmup_teacher_temp, d.teacher_temp),
            "momentum": lambda s: cosine_ramp(s, total_steps, d.momentum_start, d.momentum_end)}
        return self._schedules

    # ---------------------------------------------------------------- the loss
    def _teacher_probs(self, logits: torch.Tensor, temp: float, center: str = "center") -> torch.Tensor:
        if self.d.centering == "sinkhorn":
            world_sum = world_max = None
            if self.dist.world > 1:
                def world_sum(t):
                    torch.distributed.all_reduce(t)
                    return t

                def world_max(t):
                    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
                    return t
            return sinkhorn_knopp(logits, temp, world_sum=world_sum, world_max=world_max)
        buf = getattr(self.module, center)
        probs = centered_probs(logits, buf, temp)
        mean = logits.float().mean(0, keepdim=True)
        if self.dist.world > 1:
            torch.distributed.all_reduce(mean)
            mean /= self.dist.world
        buf.copy_(updated_center(buf, mean, 0.9))
        return probs

    def _views(self, batch: dict, g: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        im = self.model.cfg.image
        images = batch["images"].to(self.device, non_blocking=True)
        views = [to_model_input(v, im.mean, im.std, im.in_chans) for v in multicrop(images, g, self.crops)]
        masks = None
        if self.d.ibot_weight > 0:
            side = self.d.global_size // self.patch
            rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=g)))
            masks = batch_masks(2 * images.shape[0], side, side, tuple(self.d.mask_ratio), self.d.mask_probability,
                                rng)  # on the host: which patches are masked is known without asking the device
        return views, masks

    def loss(self, net: torch.nn.Module, batch: dict, step: int, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        d, temp = self.d, self._schedules["teacher_temp"](step)
        views, host_masks = self._views(batch, g)
        masks = None if host_masks is None else host_masks.to(self.device, non_blocking=True)
        b = views[0].shape[0]
        globals_ = torch.cat(views[:2])
        with torch.no_grad(), autocast(self.device, self.cfg.precision):
            t_cls, t_patch = self.teacher.tokens(globals_)
            t_probs = self._teacher_probs(self.teacher.dino_head(t_cls).float(), temp)
        student = self.student  # `net` is it, or DDP around it (forward = tokens, so gradients synchronise)
        with autocast(self.device, self.cfg.precision):
            s_cls, s_patch = net(globals_, masks)
            s_logits = [student.dino_head(s_cls[:b]), student.dino_head(s_cls[b:])]
            if d.n_local:
                l_cls, _ = net(torch.cat(views[2:]))
                s_logits += list(student.dino_head(l_cls).chunk(d.n_local))
        patches = None
        if host_masks is not None and host_masks.numpy().any():
            # masked patches by index, found on the host: boolean indexing on the device would wait for it
            flat = host_masks.flatten().nonzero()[:, 0]
            idx = flat.to(self.device, non_blocking=True)
            with torch.no_grad():
                t_patch_logits = self.teacher.patch_head(t_patch.flatten(0, 1)[idx])
                t_patch_probs = self._teacher_probs(t_patch_logits.float(), temp, "patch_center")
            patches = MaskedPatches(student.patch_head(s_patch.flatten(0, 1)[idx]).float(), t_patch_probs,
                                    owner=idx // host_masks.shape[1], n_crops=2 * b)  # owner: each patch's crop
        total, parts = dinov2_loss([x.float() for x in s_logits], list(t_probs.chunk(2)), s_cls, d.student_temp,
                                   d.dino_weight, d.koleo_weight, patches, d.ibot_weight)
        # scalar tensors, read on the host when the loop logs the step (no sync here)
        stats = {k: v.detach() for k, v in parts.items()} | {
            "teacher_entropy": entropy(t_probs).detach(), "prototypes_in_use": prototypes_in_use(t_probs)}
        self.history = self.history[-19:] + [stats]  # learning() reads the last 20
        return total, stats

    def after_step(self, step: int) -> dict:
        ema_update(self.teacher, self.student, self._schedules["momentum"](step))
        return {}

    # ---------------------------------------------------------------- validation, verdict, saving
    @torch.no_grad()
    def validate(self, loader: DataLoader) -> dict:
        """DINO loss of the teacher vs the student on two fixed global views of each validation image (no masks),
        and the teacher's entropy there: a validation loss comparable between epochs."""
        self.student.eval()
        g = torch.Generator().manual_seed(12345)
        losses, ents = [], []
        temp = self.d.teacher_temp
        for batch in loader:
            if batch["images"].shape[0] < 2:
                continue
            im = self.model.cfg.image
            views = [to_model_input(v, im.mean, im.std, im.in_chans) for v in
                     multicrop(batch["images"].to(self.device), g, MultiCropParams(**{
                         **self.crops.__dict__, "n_local": 0}))]
            t = self.teacher.dino_head(self.teacher.tokens(torch.cat(views))[0]).float()
            probs = torch.softmax((t - self.module.center) / temp, -1) if self.d.centering == "center" \
                else sinkhorn_knopp(t, temp)
            s = self.student.dino_head(self.student.tokens(torch.cat(views))[0]).float()
            losses.append(float(dino_loss(list(s.chunk(2)), list(probs.chunk(2)), self.d.student_temp)))
            ents.append(float(entropy(probs)))
        self.student.train()
        if not losses:
            return {}
        return {"val_loss": all_reduce_mean(sum(losses) / len(losses), self.dist, self.device),
                "val_teacher_entropy": sum(ents) / len(ents)}

    def learning(self, losses: list[float], warned_at: dict | None, val: dict | None) -> dict:
        """Collapse shows in the teacher: one prototype for everything (entropy 0, a single prototype in use) or the
        same flat distribution for every image (entropy log K)."""
        recent = self.history[-20:]
        log_k = math.log(self.d.prototypes)
        ent = float(np.mean([float(r["teacher_entropy"]) for r in recent])) if recent else float("nan")
        used = float(np.mean([float(r["prototypes_in_use"]) for r in recent])) if recent else float("nan")
        collapsed = bool(recent) and (ent > 0.98 * log_k or used <= 1.0 / self.d.prototypes)
        out = {"teacher_entropy": round(ent, 4), "log_prototypes": round(log_k, 4), "prototypes_in_use": round(used, 4),
               "collapsed": collapsed, "warned": warned_at}
        if collapsed:
            other = "center" if self.d.centering == "sinkhorn" else "sinkhorn"
            fixes = ("the same flat distribution for every image; things to try: weaker grey-level augmentation "
                     "(dino.jitter_p 0, dino.solarize_p 0; benchmarks/dino_views.py shows whether an untrained tower "
                     "finds an image's two views alike), a lower dino.teacher_temp and dino.warmup_teacher_temp, "
                     f"dino.centering {other} (benchmarks/RESULTS.md lists what was tried on dino-tiny)"
                     if ent > 0.98 * log_k else
                     f"one prototype for every image; things to try: dino.centering {other}, a longer "
                     "dino.teacher_temp_warmup, a lower --lr")
            out["message"] = (f"the teacher's entropy ended at {ent:.3f} of log K = {log_k:.3f} with {used:.1%} of the "
                              f"prototypes in use: collapsed to {fixes}")
        return out

    def save(self, run: Path) -> None:
        """The run's image tower is the teacher's backbone; its DINO head goes beside it (DINOv2's key layout)."""
        teacher_model = ImageModel(self.model.cfg, self.teacher.backbone)
        save_model(teacher_model, run)
        state = {}
        for k, v in self.teacher.dino_head.state_dict().items():
            k = (k.replace("last_layer.parametrizations.weight.original0", "last_layer.weight_g")
                  .replace("last_layer.parametrizations.weight.original1", "last_layer.weight_v"))
            state[k] = v.detach().cpu().contiguous()
        save_file(state, str(run / HEAD_FILE))
