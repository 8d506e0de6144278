"""What `--out` may replace, and one writer at a time.

- An output folder carries a marker of its kind (`.convirt`: index, export, run, shards, finetune). An existing
  folder is replaced (a run or finetune folder emptied first; or continued with --resume / --append) only when it
  is empty or of the same kind (its marker; made before markers, its kind's own file: index.json, manifest.json,
  ...); anything else is refused in one line, as is an output that is an input, lies in one or holds one.
- A file output that is a symlink is written through to its target; a device or FIFO (/dev/stdout, /dev/null,
  a named pipe) is written as a stream; a folder is refused. Nothing but a regular file is ever replaced.
- Index, run, shard, export and finetune folders take an advisory lock (`fcntl.flock` on `.NAME.lock` beside the
  folder, which the kernel releases when the process ends, even after kill -9): a second writer stops with one
  line naming the holder's pid, or with `wait` waits its turn.
- Results to stdout (to_stdout): a closed stdout is one line, a full one a WriteError naming stdout.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import atomic_write_bytes, staged_dir, write_error, writing

MARKER = ".convirt"


def _json_has(name: str, *keys: str) -> Callable[[Path], bool]:
    def check(folder: Path) -> bool:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys)
    return check


# kind -> (what a message calls it, how a folder written before markers is recognised)
KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "index": ("convirt index", _json_has("index.json", "fingerprint", "kind", "dim")),
    "export": ("convirt export", _json_has("manifest.json", "format", "fingerprint")),
    "run": ("convirt run", lambda f: (f / "config.json").is_file() and _json_has("model.json")(f)),
    "shards": ("convirt shard folder", _json_has("shards.json", "format", "splits")),
    "finetune": ("convirt finetune folder", _json_has("config.json", "init", "random_model")),
    "explain": ("convirt explain folder", lambda f: False),  # made after markers: its marker says
}


def folder_kind(folder: Path) -> str | None:
    """The kind of output a folder is (its marker, else its kind's own file), or None: not made by convirt."""
    folder = Path(folder)
    try:
        kind = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("kind")
        if kind in KINDS:
            return kind
    except (OSError, ValueError, AttributeError):
        pass
    return next((k for k, (_, legacy) in KINDS.items() if legacy(folder)), None)


def mark(folder: Path, kind: str) -> None:
    atomic_write_bytes(Path(folder) / MARKER, (json.dumps({"kind": kind}) + "\n").encode())


def _is_empty(folder: Path) -> bool:
    with os.scandir(folder) as it:
        return next(it, None) is None


def check_folder(path: Path, kind: str, flag: str = "--out", inputs: Iterable[str | Path | None] = ()) -> Path:
    """The folder `path` names (a symlink: its target), once it is safe to write a `kind` there: absent, empty, or a
    folder of that kind; and no input is it, inside it or holds it. Else one ConvirtError."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    noun = KINDS[kind][0]
    refuse_inputs(path, inputs, flag)
    if not os.path.lexists(real):
        return real
    if not real.is_dir():
        what = _what(real)
        raise ConvirtError(f"{flag} {path}: exists and is {what}, not a {noun} folder; choose a new folder or "
                           "remove it")
    if _is_empty(real):
        return real
    found = folder_kind(real)
    if found != kind:
        other = f" (it is a {KINDS[found][0]})" if found else ""
        raise ConvirtError(f"{flag} {path}: exists and is not a {noun}{other}; choose a new folder or remove it")
    return real


def _what(path: Path) -> str:
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "a special file"


def refuse_inputs(out: Path, inputs: Iterable[str | Path | None], flag: str = "--out") -> None:
    """An output may not be an input, lie inside an input folder, or hold an input: writing it would replace or
    bury what it reads (`embed DIR --out DIR` deleted the images it had indexed)."""
    o = Path(os.path.realpath(out))
    for given in inputs:
        if given is None or str(given) == "-":
            continue
        i = Path(os.path.realpath(given))
        if o == i:
            raise ConvirtError(f"{flag} {out}: is the input {given}; choose a new folder outside it")
        if i.is_dir() and o.is_relative_to(i):
            raise ConvirtError(f"{flag} {out}: lies inside the input {given}; choose a folder outside it")
        if i.is_relative_to(o):
            raise ConvirtError(f"{flag} {out}: holds the input {given}; choose a folder that does not")


@contextmanager
def owned_dir(path: Path, kind: str, wait: bool = False, flag: str = "--out",
              inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """A folder of `kind` built whole beside `path` and swapped in (files.staged_dir), once check_folder allows it,
    under the folder's lock; yields the folder to build in, marked with its kind."""
    real = check_folder(path, kind, flag, inputs)
    with locked(real, wait, flag):
        check_folder(path, kind, flag)  # another writer may have made it while we waited
        with staged_dir(real) as tmp:
            mark(tmp, kind)
            yield tmp


def fresh_dir(path: Path, kind: str) -> None:
    """Empty a folder check_folder allowed (absent, empty or of `kind`) and mark it: a new run or finetune in place
    of an old one. Call under its lock."""
    path = Path(path)
    with writing(path):
        if path.is_dir() and not _is_empty(path):
            if folder_kind(path) != kind:
                raise ConvirtError(f"{path}: not a {KINDS[kind][0]}; refusing to empty it")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
    mark(path, kind)


_held: dict[str, int] = {}  # lock files this process holds -> depth (a writer may call another that locks)


@contextmanager
def locked(folder: Path, wait: bool = False, flag: str = "--out") -> Iterator[None]:
    """Hold the advisory lock of `folder` (.NAME.lock beside it). Another holder: ConvirtError naming its pid, or
    with `wait` block until it is gone. The lock file is removed when released (before the lock is dropped, and a
    waiter checks it still locks the file on disk, so two writers never hold two files of one name)."""
    folder = Path(os.path.abspath(os.path.realpath(folder)))
    lock = folder.with_name(f".{folder.name}.lock")
    key = str(lock)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = _acquire(lock, wait, f"{flag} {folder}")
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def _acquire(lock: Path, wait: bool, what: str) -> int:
    while True:
        with writing(lock):
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise write_error(e, lock) from None
            if not wait:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise ConvirtError(f"{what}: another convirt (pid {holder}) is writing it; wait for it to finish "
                                   "or pass --wait") from None
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            on_disk = os.stat(lock)
            mine = os.fstat(fd)
            if (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder we waited for removed this file: lock the one there now
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def check_file(path: Path, flag: str = "--out", inputs: Iterable[str | Path | None] = ()) -> int | None:
    """Where a file output will go, checked before any work: the st_mode of what `path` names (a symlink: its
    target), None when nothing is there yet. A folder, an input or a socket is refused."""
    path = Path(path)
    refuse_inputs(path, inputs, flag)
    try:
        mode = os.stat(os.path.realpath(path)).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(mode):
        raise ConvirtError(f"{flag} {path}: is a folder; name a file to write")
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISBLK(mode)):
        raise ConvirtError(f"{flag} {path}: is {_what(path)}; name a regular file to write")
    return mode


def write_file(path: Path, data: str | bytes, flag: str = "--out", inputs: Iterable[str | Path | None] = ()) -> None:
    """A file output: a regular file (or none yet) is replaced atomically; a symlink is followed and its target
    written; a device or FIFO (/dev/stdout, a named pipe) is written as a stream; a folder, or an input, is
    refused. A write error is one WriteError naming the file."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    mode = check_file(path, flag, inputs)
    real = Path(os.path.realpath(path))
    if mode is None or stat.S_ISREG(mode):
        atomic_write_bytes(real, raw)
        return
    with writing(path), open(real, "wb") as f:
        f.write(raw)


STDOUT_CLOSED = "stdout is closed; pass --out FILE or give the command a stdout"


@contextmanager
def to_stdout() -> Iterator[None]:
    """Printing results: a closed stdout is one line; a full one (`> /dev/full`) one WriteError; a reader that went
    away (`| head`) is left to the CLI's error mapping (BrokenPipeError: a quiet end)."""
    if sys.stdout is None:
        raise ConvirtError(STDOUT_CLOSED)
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # the reader went away (`| head`): the CLI's error mapping ends quietly
    except OSError as e:
        _quiet_stdout()
        if e.errno == errno.EBADF:
            raise ConvirtError(STDOUT_CLOSED) from None
        raise write_error(e, "stdout") from None


def write_stdout(text: str) -> None:
    with to_stdout():
        sys.stdout.write(text)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's own flush at exit does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
