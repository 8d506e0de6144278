"""`convirt serve`'s process: open the Searcher once, bind, answer until SIGTERM / Ctrl-C, drain, exit.

Bound to 127.0.0.1 by default; another address needs a token or an explicit --no-auth (ServeConfig refuses the
rest). On the first SIGTERM or Ctrl-C the server stops accepting, lets the requests in flight finish (at most
--drain-s) and exits 0; a second signal while draining, or a drain that runs out of time, abandons what is left
and exits 128 + the signal (143 for SIGTERM, 130 for Ctrl-C). uvicorn runs the HTTP; its own logging is off (no
banner, no Server header, no client-supplied forwarding headers trusted) and guard.py writes the access log.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.serve.web.guard import LOOPBACK_NAMES, Guard, is_loopback

if TYPE_CHECKING:
    from convirt_cli.torchfree.config import ServeConfig

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def index_dirs(specs: list[str], runs_dir: Path) -> dict[str, Path]:
    """INDEX arguments (DIR or NAME=DIR) -> {name: folder}; none: the last index embedded."""
    from convirt_cli.torchfree.serve.index import index_meta, latest_index

    if not specs:
        path = latest_index(runs_dir)
        specs = [str(path)]
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        path = Path(folder if sep else spec)
        name = name if sep else path.resolve().name
        if not NAME.fullmatch(name):
            raise ConvirtError(f"index name {name!r}: letters, digits, '.', '_' and '-' only; name it NAME={path}")
        if name in out:
            raise ConvirtError(f"two indexes named {name!r}: name them, e.g. images={out[name]} reports={path}")
        index_meta(path)  # one line if it is no index
        out[name] = path
    return out


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ConvirtError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        hint = "pass --port N (0 picks a free one)" if e.errno == 98 else "choose another --host / --port"
        raise ConvirtError(f"cannot listen on {host}:{port} ({e.strerror}); {hint}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server with convirt's signal handling: the first signal drains, a second abandons."""

        signals: list[int]

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            self.signals = []
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handle(sig: int, frame: Any) -> None:
                self.signals.append(sig)
                if self.should_exit:
                    self.force_exit = True
                self.should_exit = True

            old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    return Server


def serve_forever(app, sock: socket.socket, drain_s: float) -> tuple[list[int], bool]:
    """Run `app` on `sock` until a signal; (the signals received, whether the drain was cut short)."""
    import uvicorn

    config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False, proxy_headers=False,
                            lifespan="off", timeout_graceful_shutdown=drain_s, timeout_keep_alive=5)
    server = _server_class()(config)
    server.run(sockets=[sock])
    return server.signals, server.force_exit


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host



def allowed_hosts(host: str) -> set[str] | None:
    """Host headers a loopback server answers (DNS rebinding); None (any) when it listens on another address."""
    return LOOPBACK_NAMES | {url_host(host).lower()} if is_loopback(host) else None


def exposure_line(cfg: ServeConfig) -> str | None:
    """What a person must know about who can reach the server: a warning for --no-auth off loopback, a note that a
    token travels in clear over plain HTTP; nothing on loopback."""
    if is_loopback(cfg.host):
        return None
    if cfg.no_auth:
        return (f"warning: --no-auth on {cfg.host}: anyone who can reach this address can search the archive and "
                "see its images")
    return "note: the token travels in clear over plain HTTP; put the server behind TLS (a reverse proxy)"

def run_server(cfg: Any, note: Callable[[str], None]) -> int:
    """`cfg`: a ServeConfig. Returns the exit code (0 after a clean drain)."""
    from convirt_cli.torchfree.serve.searcher import Searcher
    from convirt_cli.torchfree.serve.web.app import Service, build_app, model_name
    from convirt_cli.torchfree.serve.web.auth import TokenGate

    dirs = index_dirs(list(cfg.indexes), cfg.runs_dir)
    searcher = Searcher(dirs, cfg.model, backend="onnx", device=cfg.device, runs_dir=cfg.runs_dir,
                        threads=cfg.threads, bulk=False, note=note)
    service = Service(searcher, log=note if cfg.log else None)
    service.warm()
    sock = bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    guard = Guard(build_app(service), hosts=allowed_hosts(cfg.host),
                  cors_origins=tuple(cfg.cors_origin), gate=TokenGate(cfg.token) if cfg.token else None,
                  max_upload_mb=cfg.max_upload_mb, log=note if cfg.log else None)
    enc = searcher.encoder
    shown = ", ".join(f"{n} ({searcher.index(n).count} {searcher.index(n).meta['kind']} items)" for n in searcher.names)
    note(f"serving {shown} with {model_name(str(enc.path))} (onnxruntime, {enc.device_used})")
    if (line := exposure_line(cfg)) is not None:
        note(line)
    note(f"search page and API at http://{url_host(cfg.host)}:{port}/ (Ctrl-C stops)")
    signals, forced = serve_forever(guard, sock, cfg.drain_s)
    if forced or guard.cut:
        sig = signals[-1] if signals else signal.SIGTERM
        note(f"stopped with {guard.cut or 'some'} request(s) unfinished")
        return 128 + sig
    note("stopped: every request answered")
    return 0
