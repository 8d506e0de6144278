"""Atomic file writes, write errors as one line, JSON that names a damaged file, and the weights fingerprint."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from convirt_cli.torchfree.errors import ConvirtError, WriteError

WEIGHT_SUFFIXES = (".safetensors", ".bin")

# why a write failed, in words a user can act on
CAUSES = {
    errno.ENOSPC: "no space left on the device; free some or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EFBIG: "file too large (over the size limit of this shell, `ulimit -f`, or of the file system)",
    errno.EROFS: "read-only file system; write elsewhere",
    errno.EACCES: "permission denied; write elsewhere or fix the folder's permissions",
    errno.EPERM: "operation not permitted; write elsewhere or fix the folder's permissions",
    errno.EIO: "input/output error (a failing disk or lost network storage)",
}
# errnos only a write can cause: an error carrying one of these is a write error wherever it is met
WRITE_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def error_number(e: BaseException) -> int | None:
    """The errno of an OSError, or the one a native writer put in its message (safetensors: 'os error 28')."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    found = re.search(r"os error (\d+)", str(e))
    return int(found.group(1)) if found else None


def write_error(e: BaseException, path: str | Path) -> WriteError:
    n = error_number(e)
    cause = CAUSES.get(n, os.strerror(n) if n is not None else str(e).splitlines()[0][:160])
    err = WriteError(f"cannot write {path}: {cause}")
    err.path, err.errno = str(path), n
    return err


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Whatever writes `path` inside this block: an OSError (or a native writer's error carrying an errno) becomes
    one WriteError naming `path` and the cause."""
    try:
        yield
    except ConvirtError:
        raise
    except Exception as e:
        if isinstance(e, OSError) or error_number(e) is not None:
            raise write_error(e, path) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write beside `path`, then rename: readers see the old file or the new one, never half. A failed write
    (full disk, size limit, read-only) is one WriteError naming `path`; the temporary file is removed."""
    path = Path(path)
    with writing(path):
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
    error it is deleted, so readers see the old folder or the new one, never half of one. A write that fails
    inside it is one WriteError naming the file as it would have been called in `path`.

    It replaces whatever `path` is: callers check first that it is theirs to replace (outputs.owned_dir)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        os.chmod(tmp, 0o755)
        try:
            yield tmp
        except Exception as e:
            named = _in_final(e, tmp, path)
            if named is e:
                raise
            raise named from None
        with writing(path):
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            moved = path.exists()
            if moved:
                os.replace(path, old)
            try:
                os.replace(tmp, path)
            except OSError:
                if moved:  # put the old folder back: the previous state stays whole
                    os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _in_final(e: Exception, tmp: Path, final: Path) -> Exception:
    """A write error met while building in `tmp`, named by the file's final place; other errors unchanged."""
    def final_name(name: str | None) -> str | None:
        if name and Path(name).is_relative_to(tmp):
            return str(final / Path(name).relative_to(tmp))
        return None

    if isinstance(e, WriteError):
        where = final_name(getattr(e, "path", None))
        return write_error(OSError(e.errno, ""), where) if where and e.errno is not None else e
    if isinstance(e, ConvirtError):
        return e
    n = error_number(e)
    where = final_name(getattr(e, "filename", None))
    if where is None and n in WRITE_ONLY:  # a writer that does not say which file: the one written last
        where = final_name(str(max(tmp.rglob("*"), key=lambda p: p.stat().st_mtime_ns, default=tmp)))
    if where or n in WRITE_ONLY:
        return write_error(e, where or final)
    return e


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
    except WriteError:
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
