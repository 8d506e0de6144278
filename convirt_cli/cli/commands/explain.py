"""`convirt explain IMAGE... --query TEXT`: where in each image a phrase matches (torch-free with an ONNX export)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli import options as o


def explain(
    images: Annotated[list[str], typer.Argument(help="Images, folders of images or tables (as embed reads them).")],
    query: Annotated[list[str] | None, typer.Option("--query", "-q", help="Phrase to find (repeatable): one map per image and phrase.")] = None,
    like: Annotated[Path | None, typer.Option("--like", help="Another image: map how like its embedding each patch is.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="X,Y in each image's pixels: map how like that patch each patch is.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the maps (default explain/).")] = None,
    format: Annotated[str | None, typer.Option("--format", "-f", help="png (overlays) | html (overlays + index.html) | jsonl (.npy maps + one line per map on stdout) | npy")] = None,
    sigma: Annotated[float | None, typer.Option(help="Gaussian smoothing of the cell grid, in cells (BioViL: 1.5; 0: none).")] = None,
    image_col: o.ImageCol = None,
    slices: o.Slices = None,
    model: o.ServeModel = None,
    backend: o.Backend = None,
    device: o.Device = None,
    batch_size: o.BatchSize = None,
    threads: o.Threads = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Similarity maps of phrases over images (BioViL's method); without --query/--like/--at, the patches' first
    three principal components as colour."""
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import ExplainConfig

    _run(resolve(ExplainConfig, images=images, query=query, like=like, at=at, out=out, format=format, sigma=sigma,
                 image_col=image_col, slices=slices, model=model, backend=backend, device=device,
                 batch_size=batch_size, threads=threads, runs_dir=runs_dir))


def _run(cfg) -> None:
    from convirt_cli.cli.output import write_explained
    from convirt_cli.cli.progress import note, progress_bar
    from convirt_cli.torchfree.explain.run import explain_images, open_explain
    from convirt_cli.torchfree.outputs import check_folder, mark

    out = check_folder(cfg.out, "explain", inputs=[*cfg.images, cfg.like])
    encoder, items, queries = open_explain(cfg, note)
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "explain")
    skipped: list[str] = []
    with progress_bar(f"explain ({encoder.backend})", len(items), "images") as advance:
        stream = explain_images(encoder, items, queries, cfg.sigma, cfg.batch_size, advance,
                                lambda item, why: skipped.append(f"{item['path']}: {why}"))
        rows = write_explained(stream, cfg.format, cfg.out)
    for line in skipped[:10]:
        note(f"  skip {line}")
    if not rows:
        from convirt_cli.torchfree.errors import ConvirtError

        raise ConvirtError(f"no map written: all {len(items)} images were skipped (first: {skipped[0]})")
    note(f"wrote {len(rows)} maps to {cfg.out} ({len(skipped)} images skipped)")
