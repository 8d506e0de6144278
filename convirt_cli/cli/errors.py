"""The one mapping from what ends a `convirt` call early to one line on stderr and an exit code, used by the full
CLI (main.run) and the fast lane (entry.run) alike; what it does not know is a bug, and keeps its traceback.

- ConvirtError, a user mistake the library found: its own line (`error: ...`), exit 2;
  Interrupted (training stopped by a signal, checkpoint saved): `interrupted: ...`, exit 128 + the signal
- Ctrl-C: `interrupted`, exit 130; click's Abort: `aborted`, exit 1
- a click usage error (unknown flag, missing argument): click's usage text, its exit code (2)
- stdout closed early (`convirt retrieve ... | head -1`): nothing, exit 1 (as typer does)
- a write or read the user can fix (disk full, quota, read-only file system, permissions): `error: FILE: reason;
  what to do`, exit 1
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from convirt_cli.torchfree.errors import ConvirtError

# errno values of an OSError the user fixes by freeing space, writing elsewhere or changing permissions
FIXABLE = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some quota or write elsewhere",
           errno.EFBIG: "write elsewhere", errno.EROFS: "write elsewhere", errno.EACCES: "check its permissions",
           errno.EPERM: "check its permissions"}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _convirt(e: BaseException) -> int:
    assert isinstance(e, ConvirtError)
    _say(e.line())
    return e.exit_code


def _interrupted(e: BaseException) -> int:
    _say("interrupted")
    return 130


def _is_usage(e: BaseException) -> bool:
    """A click exception (typer carries its own copy of click, so known by shape, not class): it prints itself."""
    return callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int)


def _usage(e: BaseException) -> int:
    e.show()  # type: ignore[attr-defined]
    return e.exit_code  # type: ignore[attr-defined]


def _is_abort(e: BaseException) -> bool:
    return type(e).__name__ == "Abort" and "click" in type(e).__module__


def _aborted(e: BaseException) -> int:
    _say("aborted")
    return 1


def _stdout_closed(e: BaseException) -> bool:
    """A broken pipe on stdout: the reader (`| head`) has all it wanted."""
    if not isinstance(e, BrokenPipeError):
        return False
    try:
        import select

        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows) or no real stdout: take it as closed
        return True


def _drop_stdout() -> None:
    """What stdout still buffers would fail again at exit ("Exception ignored ..."): send it to /dev/null."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _quiet(e: BaseException) -> int:
    _drop_stdout()
    return 1


def _is_fixable(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in FIXABLE


def _fixable(e: BaseException) -> int:
    assert isinstance(e, OSError)
    where = f"{e.filename}: " if e.filename is not None else ""  # None: stdout, or a stream without a name
    _say(f"error: {where}{e.strerror or os.strerror(e.errno or 0)}; {FIXABLE[e.errno]}")
    if e.filename is None:  # stdout (or a nameless stream): what it still buffers can only fail again
        _drop_stdout()
    return 1


# first match wins: (is it this?, say it and give the exit code)
MAPPING: list[tuple[Callable[[BaseException], bool], Callable[[BaseException], int]]] = [
    (lambda e: isinstance(e, ConvirtError), _convirt),  # Interrupted included: its own line and 128 + signal
    (lambda e: isinstance(e, KeyboardInterrupt), _interrupted),
    (_is_abort, _aborted),
    (_is_usage, _usage),
    (_stdout_closed, _quiet),
    (_is_fixable, _fixable),
]


def exit_code(e: BaseException) -> int | None:
    """Say what `e` means to a person (or nothing) and give the exit code; None: not a known ending (a bug)."""
    for matches, handle in MAPPING:
        if matches(e):
            return handle(e)
    return None


@contextmanager
def user_errors() -> Iterator[None]:
    """Run a command: a known ending exits with its line and code (stdout flushed inside, so a full disk or a
    closed pipe is met here, not at interpreter exit); anything else propagates as the bug it is."""
    try:
        yield
        sys.stdout.flush()
    except (Exception, KeyboardInterrupt) as e:
        code = exit_code(e)
        if code is None:
            raise
        sys.exit(code)


def finish(code: object) -> None:
    """Exit with a command's returned status (typer returns 130 for Ctrl-C)."""
    if isinstance(code, int) and code:
        if code == 130:
            _say("interrupted")
        sys.exit(code)
