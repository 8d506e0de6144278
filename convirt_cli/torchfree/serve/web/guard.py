"""What every request passes before the routes see it, as one plain ASGI layer around the app (outermost, so no
route, error page or framework default escapes it).

In order: the Host header (bound to loopback, the server answers only to localhost / 127.0.0.1 / [::1]: a page
on another site that points its own name at 127.0.0.1, DNS rebinding, is refused), the Origin (a browser request
from another site is refused unless `--cors-origin` names it), the access token (auth.py), the body size (the
Content-Length up front, and every chunk counted while it is read, so an upload over the cap stops at the cap).
Every response gets nosniff, no-referrer, same-origin resource and opener policies and, unless the page set a
fuller one, `Content-Security-Policy: default-src 'none'; frame-ancestors 'none'`; no Server banner. CORS headers
only for the origins named. The access log is one line per request: client, method, path (never the query string:
a search's words stay out of it), status, milliseconds; nothing of a body.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"cross-origin-resource-policy", b"same-origin"), (b"cross-origin-opener-policy", b"same-origin"),
           (b"x-frame-options", b"DENY")]
CSP_NONE = b"default-src 'none'; frame-ancestors 'none'"
MULTIPART_SLACK = 64 << 10  # bytes of a form's boundaries and fields around an image at the cap


class BodyTooLarge(Exception):
    """Raised from inside `receive` once a body passes the cap; the app answers 413 (app.py's handler)."""

    def __init__(self, upload_mb: float):
        super().__init__(f"the request body is over the {upload_mb:g} MiB upload cap (--max-upload-mb)")


def is_loopback(host: str) -> bool:
    """An address only this machine reaches: localhost, 127.0.0.0/8, ::1 (a name other than localhost is not)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """A Host header without its port, lower-cased: 'LocalHost:8765' -> 'localhost', '[::1]:80' -> '[::1]'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[:value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def json_error(status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, list, bytes]:
    body = json.dumps({"error": message, "status": status}).encode()
    return status, [(b"content-type", b"application/json"), *headers], body


async def respond(send: Send, status: int, headers: list, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Guard:
    """app: the routes. hosts: the Host names answered (None: any, when bound beyond loopback with a token).
    gate: auth.py's check (None: no token). max_upload_mb: the largest image (a body may add a form's framing).
    log: one line per request (None: silent)."""

    app: ASGIApp
    hosts: frozenset[str] | None
    cors_origins: tuple[str, ...] = ()
    gate: Callable | None = None
    max_upload_mb: float = 20.0
    log: Callable[[str], None] | None = None
    in_flight: int = 0
    cut: int = field(default=0)  # requests cancelled before they finished (a forced stop): the exit code says so

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websockets here
            return await send({"type": "websocket.close", "code": 1008})
        started, status = time.perf_counter(), [0]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        extra = self._cors(origin)

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                own = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                if not any(k.lower() == b"content-security-policy" for k, _ in own):
                    own.append((b"content-security-policy", CSP_NONE))
                message = dict(message, headers=own + HEADERS + extra)
            await send(message)

        self.in_flight += 1
        try:
            refusal = self._refusal(scope, headers, origin)
            if refusal is None and self.gate is not None:
                refusal = await self.gate(scope, headers, receive)
            if refusal is not None:
                await respond(send_secured, *refusal)
            else:
                await self.app(scope, self._capped(receive), send_secured)
        except asyncio.CancelledError:
            self.cut += 1
            raise
        finally:
            self.in_flight -= 1
            if self.log is not None:
                client = (scope.get("client") or ("-",))[0]
                ms = (time.perf_counter() - started) * 1000
                self.log(f"{client} {scope['method']} {scope['path'][:200]} {status[0] or '-'} {ms:.1f} ms")

    @property
    def max_body(self) -> int:
        return int(self.max_upload_mb * 2**20) + MULTIPART_SLACK

    def _cors(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        if origin is None or origin not in self.cors_origins:
            return []
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

    def _refusal(self, scope: Scope, headers: dict[str, str], origin: str | None) -> tuple | None:
        """A 4xx (status, headers, body) for a request that must not reach the routes, else None."""
        host = headers.get("host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return json_error(403, f"Host {host[:100]!r} is not a name of this server (it answers to "
                                   f"{', '.join(sorted(self.hosts))}): requests through another name are refused")
        if origin is not None and origin not in self.cors_origins and origin not in (f"http://{host}",
                                                                                     f"https://{host}"):
            return json_error(403, f"a request from the page of another site ({origin[:100]}) is refused; "
                                   "the server's --cors-origin names the sites allowed")
        if scope["method"] == "OPTIONS":
            if origin in self.cors_origins and "access-control-request-method" in headers:
                return 204, [(b"access-control-allow-methods", b"GET, POST"),
                             (b"access-control-allow-headers", b"Authorization, Content-Type"),
                             (b"access-control-max-age", b"600")], b""
            return json_error(405, "OPTIONS is answered only to a preflight from a --cors-origin",
                              [(b"allow", b"GET, POST")])
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return json_error(413, str(BodyTooLarge(self.max_upload_mb)) if length.isdigit() else
                              f"Content-Length {length[:40]!r} is not a byte count")
        return None

    def _capped(self, receive: Receive) -> Receive:
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_upload_mb)
            return message

        return capped
