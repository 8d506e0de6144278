"""The access token (`convirt serve --token T`, or CONVIRT_TOKEN): checked on every route but /api/health.

A script sends `Authorization: Bearer T`. A browser cannot put a header on an <img>, so the page signs in once:
`/?token=T` (a link the operator hands out) or the sign-in form posts T to /login; either sets a cookie holding
an HMAC of the token (not the token), HttpOnly and SameSite=Strict (so another site's requests never carry it),
and redirects to a URL without the token. Every comparison is constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
from urllib.parse import parse_qsl, urlencode

from convirt_cli.torchfree.serve.web.guard import Receive, Scope, json_error

COOKIE = "convirt_session"
OPEN_PATHS = frozenset({"/api/health"})
LOGIN_MAX = 4096  # bytes of a sign-in form
STYLE = ("body{font:16px system-ui,sans-serif;max-width:28em;margin:4em auto;padding:0 1em}input{font:inherit;"
         "padding:.4em;width:100%;box-sizing:border-box}button{font:inherit;margin-top:.6em;padding:.4em 1em}"
         "[role=alert]{color:#a00}")


def csp_hash(text: str) -> str:
    """A CSP source for one inline <script> or <style>: only that exact text runs."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


LOGIN_CSP = f"default-src 'none'; style-src {csp_hash(STYLE)}; form-action 'self'; frame-ancestors 'none'".encode()


def session_value(token: str) -> str:
    """What the cookie holds: a keyed hash of the token, so the cookie is not the token itself."""
    return hmac.new(token.encode(), b"convirt serve session", hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def login_page(message: str = "") -> bytes:
    note = f"<p role=alert>{html.escape(message)}</p>" if message else ""
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>convirt search: sign in</title><style>{STYLE}</style></head><body>"
            "<h1>convirt search</h1><p>This server needs its access token.</p>" + note +
            "<form method=post action=/login><label for=t>Token</label><input id=t name=token type=password "
            "autocomplete=current-password required autofocus><button>Sign in</button></form></body></html>"
            ).encode()


def _cookie(token: str) -> tuple[bytes, bytes]:
    return b"set-cookie", f"{COOKIE}={session_value(token)}; Path=/; HttpOnly; SameSite=Strict".encode()


def _html(status: int, body: bytes, extra: list = ()) -> tuple[int, list, bytes]:
    return status, [(b"content-type", b"text/html; charset=utf-8"), (b"content-security-policy", LOGIN_CSP),
                    *extra], body


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        out.setdefault(name, value)
    return out


class TokenGate:
    """guard.Guard's `gate`: None to let a request through, or the refusal (or sign-in redirect) to send."""

    def __init__(self, token: str):
        self.token, self.session = token, session_value(token)

    def holds(self, headers: dict[str, str]) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and same(given.strip(), self.token):
            return True
        return same(_cookies(headers.get("cookie", "")).get(COOKIE, ""), self.session)

    async def __call__(self, scope: Scope, headers: dict[str, str], receive: Receive) -> tuple | None:
        path, method = scope["path"], scope["method"]
        if path in OPEN_PATHS or self.holds(headers):
            return None
        if path == "/login" and method == "POST":
            return await self._login(receive)
        if path == "/" and method in ("GET", "HEAD"):
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            given = [v for k, v in query if k == "token"]
            if given and same(given[0], self.token):
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                return 303, [(b"location", ("/?" + rest if rest else "/").encode()), _cookie(self.token)], b""
            return _html(401, login_page("That token is not this server's." if given else ""))
        return json_error(401, "this server needs its access token: send `Authorization: Bearer TOKEN`",
                          [(b"www-authenticate", b'Bearer realm="convirt"')])

    async def _login(self, receive: Receive) -> tuple:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > LOGIN_MAX:
                return json_error(413, f"a sign-in form is at most {LOGIN_MAX} bytes")
            if not message.get("more_body"):
                break
        given = [v for k, v in parse_qsl(body.decode("utf-8", "replace")) if k == "token"]
        if given and same(given[0], self.token):
            return 303, [(b"location", b"/"), _cookie(self.token)], b""
        return _html(401, login_page("That token is not this server's."))
