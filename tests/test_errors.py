"""One mapping (cli/errors.py) from how a `convirt` call ends to one line on stderr and an exit code, for both the
full CLI and the fast lane: user mistakes, interrupts, a closed stdout, a full disk; a bug keeps its traceback."""

from __future__ import annotations

import ast
import errno
import subprocess
import sys
from pathlib import Path

import pytest

from convirt_cli.cli.errors import user_errors
from convirt_cli.torchfree.errors import ConvirtError, Interrupted

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("exc", "code", "line"), [
    (ConvirtError("--k 0: input should be greater than or equal to 1"), 2,
     "error: --k 0: input should be greater than or equal to 1"),
    (Interrupted("stopped at step 3; resume with ...", 15), 143, "interrupted: stopped at step 3; resume with ..."),
    (KeyboardInterrupt(), 130, "interrupted"),
    (OSError(errno.ENOSPC, "No space left on device", "runs/r/checkpoints/step3.tmp"), 1,
     "error: runs/r/checkpoints/step3.tmp: No space left on device; free some space or write elsewhere"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/out"), 1,
     "error: /data/out: Permission denied; check its permissions"),
])
def test_known_endings_are_one_line_and_an_exit_code(exc, code, line, capsys):
    with pytest.raises(SystemExit) as e, user_errors():
        raise exc
    assert e.value.code == code
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize("exc", [ValueError("a bug"), FileNotFoundError(errno.ENOENT, "No such file", "x")])
def test_a_bug_keeps_its_traceback(exc):
    with pytest.raises(type(exc)), user_errors():
        raise exc


WRITE = """
import sys
from convirt_cli.cli.errors import user_errors
with user_errors():
    sys.stdout.write("a/path.png\\n" * int(sys.argv[1]))
"""


def test_a_closed_stdout_is_a_quiet_exit(tmp_path):
    """`convirt retrieve ... | head -1`: the reader left; no traceback, no 'Exception ignored', exit 1."""
    p = subprocess.Popen([sys.executable, "-c", WRITE, "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    p.stdout.close()  # the reader is gone before the writer has written
    err = p.stderr.read().decode()
    assert p.wait() == 1 and err == "", err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_on_stdout_is_one_line(tmp_path):
    """`convirt retrieve ... > /dev/full`: ENOSPC meets the mapping, even for a line small enough to wait in the
    buffer until exit (stdout is flushed inside the mapping)."""
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-c", WRITE, "1"], stdout=full, stderr=subprocess.PIPE, text=True,
                           cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=False)
    assert p.returncode == 1
    assert p.stderr == "error: No space left on device; free some space or write elsewhere\n", p.stderr


def test_entry_and_main_share_the_mapping_without_a_cycle():
    """main never imports entry; both import errors.user_errors."""
    def imports(name: str) -> set[str]:
        tree = ast.parse((ROOT / "convirt_cli" / "cli" / name).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    main, entry = imports("main.py"), imports("entry.py")
    assert "convirt_cli.cli.entry" not in main
    assert "convirt_cli.cli.errors" in main and "convirt_cli.cli.errors" in entry
