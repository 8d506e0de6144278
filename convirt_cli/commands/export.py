"""`convirt export [RUN] --onnx`: ONNX graphs + tokenizer + preprocess/manifest, parity-checked against torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli import options as o


def export(
    run: Annotated[Path | None, typer.Argument(help="Run directory (default: the latest run).")] = None,
    onnx: Annotated[bool | None, typer.Option("--onnx", help="Export to ONNX (the one format so far).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Export folder (default: RUN/onnx).")] = None,
    fp16: Annotated[bool | None, typer.Option("--fp16", help="Half-precision graphs (GPU serving); fp32 inputs/outputs.")] = None,
    int8_text: Annotated[bool | None, typer.Option("--int8-text", help="Dynamic int8 quantisation of the text tower (CPU speed).")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 18).")] = None,
    seed: o.Seed = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Export a run to image.onnx + text.onnx (embedding outputs) and check them against torch."""
    flags = dict(locals())
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from convirt_cli.config import ExportConfig
    from convirt_cli.export import export_onnx
    from convirt_cli.runs import resolve_run

    hf_logging.disable_progress_bar()
    cfg = ExportConfig.resolve(**flags)
    run_dir = resolve_run(cfg.run, cfg.runs_dir)
    console = Console(stderr=True)
    with console.status("exporting") as status:
        folder, manifest = export_onnx(run_dir, cfg.out, fp16=cfg.fp16, int8_text=cfg.int8_text, opset=cfg.opset,
                                       seed=cfg.seed, on_stage=lambda s: status.update(s))
    p = manifest["parity"]
    for name in ("image", "text"):
        r = p[name]
        console.print(f"parity {name} ({r['precision']}): max|diff| {r['max_abs_diff']:.2g}, "
                      f"min cosine {r['min_cosine']:.6f}, top-10 overlap {r['top10_overlap']:.3f}")
    console.print(f"[green]exported[/] {run_dir} -> [bold]{folder}[/] (fingerprint {manifest['fingerprint']})")
