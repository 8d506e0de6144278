"""`convirt export [RUN] --onnx`: ONNX graphs + tokenizer + preprocess/manifest, parity-checked against torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o


def export(
    run: Annotated[Path | None, typer.Argument(help="Run directory (default: the latest run), or a classifier folder saved by `convirt finetune` (its models/<name>/).")] = None,
    onnx: Annotated[bool | None, typer.Option("--onnx", help="Export to ONNX (the one format so far).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Export folder (default: RUN/onnx).")] = None,
    wait: o.Wait = None,
    fp16: Annotated[bool | None, typer.Option("--fp16", help="Half-precision graphs (GPU serving); fp32 inputs/outputs.")] = None,
    int8_text: Annotated[bool | None, typer.Option("--int8-text", help="Dynamic int8 quantisation of the text tower (CPU speed).")] = None,
    int8_image: Annotated[bool | None, typer.Option("--int8-image", help="Static int8 image tower calibrated on the run's own images (CPU speed for embedding archives); gated on held-out images.")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 18).")] = None,
    seed: o.Seed = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Export a run to image.onnx + text.onnx (embedding outputs), or a fine-tuned classifier to classifier.onnx,
    and check them against torch."""
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from convirt_cli.cli.settings import resolve
    from convirt_cli.torch.classifier import is_classifier_dir
    from convirt_cli.torch.export import export_classifier_onnx, export_onnx
    from convirt_cli.torchfree.config import ExportConfig
    from convirt_cli.torchfree.errors import ConvirtError
    from convirt_cli.torchfree.runs import resolve_run

    hf_logging.disable_progress_bar()
    cfg = resolve(ExportConfig, run=run, onnx=onnx, out=out, fp16=fp16, int8_text=int8_text, int8_image=int8_image,
                  opset=opset, seed=seed, runs_dir=runs_dir, wait=wait)
    console = Console(stderr=True)
    if cfg.run is not None and is_classifier_dir(cfg.run):
        if cfg.int8_text:
            raise ConvirtError(f"{cfg.run} is a classifier (no text tower); drop --int8-text")
        with console.status("exporting") as status:
            folder, manifest = export_classifier_onnx(cfg.run, cfg.out, fp16=cfg.fp16, opset=cfg.opset, seed=cfg.seed,
                                                      on_stage=lambda s: status.update(s), wait=cfg.wait)
        p = manifest["parity"]
        console.print(f"parity classifier ({p['precision']}): max|diff| {p['max_abs_diff']:.2g} over {p['images']} images")
        console.print(f"[green]exported[/] {cfg.run} ({manifest['task']}: {', '.join(manifest['label_names'])}) "
                      f"-> [bold]{folder / 'classifier.onnx'}[/]")
        return
    run_dir = resolve_run(cfg.run, cfg.runs_dir)
    with console.status("exporting") as status:
        folder, manifest = export_onnx(run_dir, cfg.out, fp16=cfg.fp16, int8_text=cfg.int8_text, opset=cfg.opset,
                                       seed=cfg.seed, on_stage=lambda s: status.update(s), int8_image=cfg.int8_image,
                                       wait=cfg.wait)
    p = manifest["parity"]
    for name in manifest.get("towers", ["image", "text"]):
        r = p[name]
        bits = manifest.get("int8", {}).get("image", {}).get("weight_bits") if name == "image" else None
        prec = f"{r['precision']}, {bits}-bit weights" if bits and r["precision"] == "int8" else r["precision"]
        console.print(f"parity {name} ({prec}): max|diff| {r['max_abs_diff']:.2g}, "
                      f"min cosine {r['min_cosine']:.6f}, top-10 overlap {r['top10_overlap']:.3f}")
    console.print(f"[green]exported[/] {run_dir} -> [bold]{folder}[/] (fingerprint {manifest['fingerprint']})")
    for line in manifest.get("warnings", []):
        console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
