"""Helpers for the `convirt serve` tests: start the real command in a subprocess on a free port of 127.0.0.1, talk
to it through a real socket (http.client: every header as sent, nothing added), stop it with a signal."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Served:
    proc: subprocess.Popen
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def start(args: list, log: Path, env: dict | None = None, timeout: float = 120, python=None) -> Served:
    """`convirt serve ARGS --port 0`, once it prints its address. `python(argv)`: the interpreter's arguments that
    run `convirt argv` some other way (default: `-m convirt_cli argv`)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CONVIRT_")}, "PYTHONPATH": str(ROOT),
           **(env or {})}
    out = log.open("w")
    argv = ["serve", *map(str, args), "--port", "0"]
    cmd = [sys.executable, *(python(argv) if python else ["-m", "convirt_cli", *argv])]
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"API at http://[^\s]+:(\d+)/", log.read_text(errors="replace"))
        if found:
            return Served(proc, int(found.group(1)), log)
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"serve did not start: {log.read_text()}")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         host: str = "127.0.0.1") -> Reply:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def multipart(fields: dict[str, str], file: bytes | None, name: str = "image",
              filename: str = "scan.png") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body (as a browser builds one) and its Content-Type header."""
    b = uuid.uuid4().hex
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    if file is not None:
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + file + b"\r\n")
    return b"".join(parts) + f"--{b}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={b}"}
