"""Which encoder serves a command: an ONNX export (onnxruntime, torch-free) or a run (torch).

--model accepts a run directory or an export folder (default: the latest run). --backend auto picks the
export when one matches the weights (an export folder, or RUN/onnx with the run's fingerprint), else
torch. Importing this module never imports torch; only choosing the torch backend does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import read_json, weights_fingerprint
from convirt_cli.torchfree.runs import is_run_dir, resolve_run, run_warnings
from convirt_cli.torchfree.serve.encoder import OnnxEncoder, is_export_dir


@dataclass
class ModelRef:
    run: Path | None  # the weights, for the torch backend
    export: Path | None  # a matching ONNX export
    why_no_export: str = ""  # when a run has none: what a user should do about it

    @property
    def path(self) -> Path:
        return self.export or self.run  # type: ignore[return-value]


def resolve_model(spec: str | Path | None, runs_dir: Path = Path("runs")) -> ModelRef:
    if spec is not None and is_export_dir(Path(spec)):
        export = Path(spec).resolve()
        src = Path(read_json(export / "manifest.json", "re-export it with `convirt export RUN --onnx`").get("source_run", ""))
        return ModelRef(run=src if is_run_dir(src) else None, export=export)
    if spec is not None and not is_run_dir(Path(spec)):
        raise ConvirtError(f"{spec}: neither a run directory (model.json) nor an ONNX export (manifest.json)")
    run = resolve_run(spec, runs_dir).resolve()
    export = run / "onnx"
    if not is_export_dir(export):
        return ModelRef(run, None, f"{run} has no ONNX export; `convirt export {run} --onnx` makes this command "
                                   "torch-free and faster to start")
    if read_json(export / "manifest.json", f"re-export: `convirt export {run} --onnx`").get("fingerprint") \
            != weights_fingerprint(run):
        return ModelRef(run, None, f"{export} is stale (exported from other weights than the run holds now); "
                                   f"re-export it: `convirt export {run} --onnx`")
    return ModelRef(run=run, export=export)


def open_encoder(spec: str | Path | None, backend: str = "auto", device: str = "auto", runs_dir: Path = Path("runs"),
                 threads: int | None = None, note: Callable[[str], None] | None = None, bulk: bool = True,
                 workers: int | None = None):
    """An encoder with .encode_images(paths) / .encode_texts(texts), .fingerprint, .dim, .backend, .path.

    bulk=False: a few inputs (retrieve's queries), so start fast rather than run big batches fast. workers: image
    decoding workers (None: one per core). `note` hears, in one line each, a fall-back to torch and why, and what a
    user should know about the run (interrupted, or did not learn)."""
    say = note or (lambda line: None)
    ref = resolve_model(spec, runs_dir)
    if backend not in ("auto", "onnx", "torch"):
        raise ConvirtError(f"--backend {backend}: expected auto, onnx or torch")
    if backend == "onnx" or (backend == "auto" and ref.export is not None):
        if ref.export is None:
            raise ConvirtError(f"{ref.why_no_export}; or use --backend torch")
        enc = OnnxEncoder(ref.export, device=device, threads=threads, bulk=bulk, workers=workers)
        for line in enc.manifest.get("warnings", []):
            say(f"warning: {line}")
        return enc
    if ref.run is None:
        raise ConvirtError(f"{ref.export}: its source run is gone, so --backend torch cannot load it; use --backend onnx")
    if backend == "auto":
        say(f"warning: using torch: {ref.why_no_export}")
    for line in run_warnings(ref.run):
        say(f"warning: {line}")
    from convirt_cli.torch.encode import TorchEncoder

    return TorchEncoder(ref.run, device=device, threads=threads, workers=workers)
