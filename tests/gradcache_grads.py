"""Raw parameter gradients of one training step, the whole contrastive batch at once (--accum-steps 1) vs GradCache
in K chunks, for the ConVIRT and SimCLR objectives. Imported by tests/test_scale.py; run as a script under
`torchrun --nproc-per-node 2` it does the same with DDP over gloo, each rank its own rows, and rank 0 writes the
largest difference it saw to the JSON file named by argv[2]."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from convirt_cli.torch.model import create_model
from convirt_cli.torch.train.distributed import Dist
from convirt_cli.torchfree.config import PretrainConfig
from convirt_cli.torchfree.registry import get_model_config

TEXTS = ["left pleural effusion.", "no acute disease.", "right lower lobe consolidation.", "cardiomegaly.",
         "normal heart size. clear lungs.", "small bilateral effusions.", "pneumothorax on the left.", "edema."]


def no_batchnorm_config():
    """tiny's text tower and heads over a 2-block ViT (layer norm: sub-batches do not change its outputs), no dropout
    or stochastic depth: every difference left is the method's."""
    cfg = get_model_config("tiny")
    image = get_model_config("dino-tiny").image
    image = image.model_copy(update={"kwargs": image.kwargs | {"drop_path_rate": 0.0, "depth": 2}, "image_size": 32})
    text = cfg.text.model_copy(update={"hf_config": cfg.text.hf_config | {"hidden_dropout_prob": 0.0,
                                                                          "attention_probs_dropout_prob": 0.0}})
    return cfg.model_copy(update={"name": "nobn", "image": image, "text": text})


def step_grads(objective: str, k: int, rows: int, dist: Dist | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Gradients after one loss + backward of `rows` rows on this rank, in k GradCache chunks (k = 1: plain)."""
    from convirt_cli.torch.objectives.convirt import ConVIRTObjective
    from convirt_cli.torch.objectives.simclr import SimCLRObjective

    dist = dist or Dist()
    torch.manual_seed(0)  # the same towers on every rank and for every k
    mcfg = no_batchnorm_config()
    if objective == "simclr":
        mcfg = mcfg.model_copy(update={"text": None})
    model = create_model(mcfg, texts=TEXTS)
    cfg = PretrainConfig(data=Path("."), objective=objective, batch_size=rows // k, accum_steps=k, device="cpu")
    kind = SimCLRObjective if objective == "simclr" else ConVIRTObjective
    obj = kind(model, cfg, torch.device("cpu"), dist)
    net = obj.trainable()
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    g = torch.Generator().manual_seed(1000 + seed * 10 + dist.rank)
    images = torch.randint(0, 256, (rows, 1, 32, 32), dtype=torch.uint8, generator=g)
    batch = obj.collate([{"index": i, "image": images[i], "text": TEXTS[(i + dist.rank) % len(TEXTS)]}
                         for i in range(rows)])
    step_g = torch.Generator().manual_seed(7 + dist.rank)  # the step's augmentations: the same for every k
    if k > 1:
        obj.loss_and_backward(net, batch, 0, step_g)
    else:
        loss, _ = obj.loss(net, batch, 0, step_g)
        loss.backward()
    return {n: p.grad.detach().clone() for n, p in obj.trainable().named_parameters() if p.grad is not None}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and len(a) > 10, (sorted(a)[:5], sorted(b)[:5])
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def grad_scale(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a| / |b| over all gradients: 1 when the two paths agree on the scale."""
    na = torch.sqrt(sum((x.double() ** 2).sum() for x in a.values()))
    nb = torch.sqrt(sum((x.double() ** 2).sum() for x in b.values()))
    return float(na / nb)


def main() -> None:
    import torch.distributed as torch_dist

    objective, out = sys.argv[1], Path(sys.argv[2])
    torch_dist.init_process_group("gloo")
    dist = Dist(torch_dist.get_rank(), torch_dist.get_world_size(), 0)
    whole = step_grads(objective, 1, 8, dist)
    cached = step_grads(objective, 2, 8, dist)
    if dist.main:
        out.write_text(json.dumps({"max_diff": max_diff(whole, cached), "scale": grad_scale(cached, whole)}))
    torch_dist.destroy_process_group()


if __name__ == "__main__":
    main()
