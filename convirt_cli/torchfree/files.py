"""Atomic file writes, JSON that names a damaged file, and the weights fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from convirt_cli.torchfree.errors import ConvirtError

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write beside `path`, then rename: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def staged_dir(path: Path) -> Iterator[Path]:
    """Yield an empty folder beside `path` to build in; on success it replaces `path` whole by renames, on any
    error it is deleted, so readers see the old folder or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path, fix: str = "rebuild it") -> dict:
    """A JSON object from `path`; a damaged file is one ConvirtError naming it and `fix`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvirtError(f"{path}: damaged ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise ConvirtError(f"{path}: damaged (not a JSON object); {fix}")
    return data


FINGERPRINT_CACHE = ".fingerprint.json"


def weights_fingerprint(model_dir: Path) -> str:
    """sha256 over the weight files of a saved model (heads + towers), 16 hex digits.

    Computed from files, not tensors, so an ONNX export, an index and a run can be matched without torch.
    Hashing ClinicalBERT-sized weights takes a second or more, and embed/retrieve ask on every call, so the
    result is kept in MODEL_DIR/.fingerprint.json beside the (path, size, mtime) of the files it covers and
    reused while those are unchanged.
    """
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()
                   and p.relative_to(model_dir).parts[0] in ("image", "text", "heads.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no weight files")
    stamp = [[p.relative_to(model_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = model_dir / FINGERPRINT_CACHE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("files") == stamp:
            return cached["fingerprint"]
    except (OSError, ValueError, AttributeError):
        pass
    fingerprint = _hash_files(model_dir, files)
    try:
        write_json(cache, {"fingerprint": fingerprint, "files": stamp})
    except OSError:
        pass  # a read-only run directory: hash again next time
    return fingerprint


def _hash_files(model_dir: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(model_dir).as_posix().encode() + b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
