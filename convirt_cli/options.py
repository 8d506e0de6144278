"""Shared Annotated option aliases: every flag defaults to None (= unset) so config sources below win."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Preset name, preset .json, or run directory.")]
Pretrained = Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="Download hub weights for the preset's towers.")]
ImageWeights = Annotated[Optional[Path], typer.Option(help="Local folder with image tower weights (timm local-dir or HF).")]
TextWeights = Annotated[Optional[Path], typer.Option(help="Local folder with the text tower (config, tokenizer, weights).")]
ImageCol = Annotated[Optional[str], typer.Option(help="Column holding image paths (relative to the table).")]
TextCol = Annotated[Optional[str], typer.Option(help="Column holding the report text.")]
SplitCol = Annotated[Optional[str], typer.Option(help="Column with train/val/test values (case-insensitive).")]
PatientCol = Annotated[Optional[str], typer.Option(help="Column with patient ids for a patient-level split (auto-detected).")]
ValFraction = Annotated[Optional[float], typer.Option(help="Fraction of patients held out for validation.")]
Strict = Annotated[Optional[bool], typer.Option("--strict/--no-strict", help="Fail on the first bad row instead of skipping it.")]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory.")]
Epochs = Annotated[Optional[int], typer.Option(help="Passes over the training data.")]
BatchSize = Annotated[Optional[int], typer.Option(help="Pairs per step (per process under torchrun).")]
Lr = Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW).")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed (data order, augmentation, init).")]
NumWorkers = Annotated[Optional[int], typer.Option(help="DataLoader worker processes.")]
Device = Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")]
ImageSize = Annotated[Optional[int], typer.Option(help="Square input size in pixels (default: the preset's).")]
RunsDir = Annotated[Optional[Path], typer.Option(help="Where runs live (default runs/).")]
ServeModel = Annotated[Optional[str], typer.Option("--model", "-m", help="Run directory or ONNX export folder (default: the latest run).")]
Backend = Annotated[Optional[str], typer.Option(help="auto (ONNX when an export matches, else torch) | onnx | torch")]
Threads = Annotated[Optional[int], typer.Option(help="Intra-op threads for onnxruntime / torch (default: all cores).")]
IndexDir = Annotated[Optional[Path], typer.Option("--index", help="Index folder (default: the last one embedded, see <runs-dir>/latest-index).")]
LabelCol = Annotated[Optional[str], typer.Option(help="Column holding the class label.")]
IgnoreLabel = Annotated[Optional[list[str]], typer.Option(help="Label value to leave out (repeatable; default: empty).")]
Prompts = Annotated[Optional[Path], typer.Option(help='JSON file {"label": ["text", ...]} of text queries / prompts per class.')]
ReportFormat = Annotated[Optional[str], typer.Option("--format", help="table | json")]
