"""Shared Annotated option aliases: every flag defaults to None (= unset) so config sources below win."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Model = Annotated[str | None, typer.Option("--model", "-m", help="Preset name, preset .json, or run directory.")]
Pretrained = Annotated[bool | None, typer.Option("--pretrained/--no-pretrained", help="Download hub weights for the preset's towers.")]
ImageWeights = Annotated[Path | None, typer.Option(help="Local folder with image tower weights (timm local-dir or HF).")]
TextWeights = Annotated[Path | None, typer.Option(help="Local folder with the text tower (config, tokenizer, weights).")]
ImageCol = Annotated[str | None, typer.Option(help="Column holding image paths (relative to the table).")]
TextCol = Annotated[str | None, typer.Option(help="Column holding the report text (or the path of a .txt report file); a comma list joins several (findings,impression).")]
Sections = Annotated[str | None, typer.Option(help="Keep only these headed report sections, comma list (e.g. findings,impression); reports with none are skipped and counted.")]
SplitCol = Annotated[str | None, typer.Option(help="Column with train/val/test values (case-insensitive).")]
PatientCol = Annotated[str | None, typer.Option(help="Column with patient ids for a patient-level split (auto-detected).")]
ValFraction = Annotated[float | None, typer.Option(help="Fraction of patients held out for validation.")]
Encoding = Annotated[str | None, typer.Option(help="Text encoding of the table: auto (UTF-8, UTF-16 by BOM, else cp1252) or a name such as latin-1.")]
Where = Annotated[list[str] | None, typer.Option("--where", help="Keep rows whose COLUMN is one of the values, e.g. view=PA,AP (frontal views; DICOM folders have a view column), or none of them, e.g. 'modality!=CT'; repeat for several columns. The rest are counted, not used.")]
Join = Annotated[list[Path] | None, typer.Option("--join", help="A table whose columns join the data's rows on every column the two share, e.g. MIMIC-CXR's per-study labels (mimic-cxr-2.0.0-chexpert.csv.gz) or split file; repeatable.")]
Strict = Annotated[bool | None, typer.Option("--strict/--no-strict", help="Fail on the first bad row instead of skipping it.")]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory.")]
Wait = Annotated[bool | None, typer.Option("--wait", help="When another convirt is writing the same output folder, wait for it to finish instead of stopping.")]
Epochs = Annotated[int | None, typer.Option(help="Passes over the training data.")]
BatchSize = Annotated[int | None, typer.Option(help="Pairs per step (per process under torchrun).")]
Lr = Annotated[float | None, typer.Option(help="Peak learning rate (AdamW; default: the preset's).")]
Seed = Annotated[int | None, typer.Option(help="Random seed (data order, augmentation, init).")]
NumWorkers = Annotated[int | None, typer.Option(help="DataLoader worker processes (default: on a GPU, one per core up to 8, one core left to the loop; on CPU none).")]
Device = Annotated[str | None, typer.Option(help="auto | cpu | cuda")]
ImageSize = Annotated[int | None, typer.Option(help="Square input size in pixels (default: the preset's).")]
Window = Annotated[str | None, typer.Option(
    help="High-bit-depth grey levels (DICOM, NIfTI, 16-bit PNG/TIFF) to 8 bits: auto (the file's window, else the "
         "0.5-99.5 percentiles) | minmax | percentile:LO,HI | fixed:C,W | a CT window in HU: lung (1500/-600), "
         "mediastinum (350/50), soft-tissue (400/40), bone (2500/480), brain (80/40). Kept by the run and its export.")]
Slices = Annotated[str | None, typer.Option(
    help="Volumes (NIfTI): which axial slices become images, each an item with its index: middle (default) | all | "
         "every:N.")]
RunsDir = Annotated[Path | None, typer.Option(help="Where runs live (default runs/).")]
ServeModel = Annotated[str | None, typer.Option("--model", "-m", help="Run directory or ONNX export folder (default: the latest run).")]
Backend = Annotated[str | None, typer.Option(help="auto (ONNX when an export matches, else torch) | onnx | torch")]
Threads = Annotated[int | None, typer.Option(help="Intra-op threads for onnxruntime / torch (default: all cores).")]
Workers = Annotated[int | None, typer.Option(help="Image decoding workers, processes for many images (default: one per core).")]
IndexDir = Annotated[Path | None, typer.Option("--index", help="Index folder (default: the last one embedded, see <runs-dir>/latest-index).")]
LabelCol = Annotated[str | None, typer.Option(help="Column holding the class label.")]
IgnoreLabel = Annotated[list[str] | None, typer.Option(help="Label value to leave out (repeatable; default: empty).")]
Prompts = Annotated[Path | None, typer.Option(help='JSON file {"label": ["text", ...]} of text queries / prompts per class.')]
ReportFormat = Annotated[str | None, typer.Option("--format", help="table | json")]
ReportOut = Annotated[Path | None, typer.Option("--out", "-o", help="Also write the JSON report here.")]
