"""`convirt serve`: a search page and JSON API over one or more indexes, torch-free (onnxruntime), safe by default.

The server is the library's (torchfree/serve/web/); this command only gathers its options.
"""

from __future__ import annotations

from typing import Annotated

import typer

from convirt_cli.cli import options as o


def serve(
    indexes: Annotated[list[str] | None, typer.Argument(
        help="Index folders (or NAME=DIR), of one model; default: the last one embedded. An image index and a "
             "report index show side by side.", show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="ONNX export folder, or a run with one (default: the model the first index names).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1: this machine only). Any other needs --token or --no-auth.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8765; 0: a free one, printed).")] = None,
    token: Annotated[str | None, typer.Option(help="Access token (16+ characters) clients send as `Authorization: Bearer T`; the page signs in with it. CONVIRT_TOKEN keeps it out of the process list.")] = None,
    no_auth: Annotated[bool | None, typer.Option("--no-auth", help="Serve an address other than loopback without a token (prints a warning).")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="A site (https://host[:port]) whose pages may call the API from a browser; repeatable. None by default.")] = None,
    max_upload_mb: Annotated[float | None, typer.Option(help="Largest image upload in MiB (default 20).")] = None,
    drain_s: Annotated[float | None, typer.Option(help="On SIGTERM / Ctrl-C, finish requests in flight for at most this long (default 30).")] = None,
    log: Annotated[bool | None, typer.Option("--log/--no-log", help="One access-log line per request on stderr (never a query's words or a body).")] = None,
    device: o.Device = None,
    threads: o.Threads = None,
    runs_dir: o.RunsDir = None,
) -> None:
    """Serve a search page and a JSON API (/api/search, /api/items/ID, /api/openapi.json) over indexes."""
    from convirt_cli.cli.progress import note
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import ServeConfig
    from convirt_cli.torchfree.serve.web.server import run_server

    cfg = resolve(ServeConfig, indexes=indexes or None, model=model, host=host, port=port, token=token,
                  no_auth=no_auth, cors_origin=cors_origin or None, max_upload_mb=max_upload_mb, drain_s=drain_s,
                  log=log, device=device, threads=threads, runs_dir=runs_dir)
    code = run_server(cfg, note)
    if code:
        raise typer.Exit(code)
