"""The search page: one HTML file shipped in the package (page.html), its script and style inline, nothing fetched
from anywhere but this server's API. Its Content-Security-Policy allows exactly that page's one script and one
style (by their SHA-256), images from this server (blob: for the preview of an image being searched, data: for the empty icon),
requests to this server, and no framing.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from starlette.responses import Response

from convirt_cli.torchfree.serve.web.auth import csp_hash


@cache
def page() -> tuple[bytes, str]:
    """(page.html's bytes, its Content-Security-Policy)."""
    text = files("convirt_cli.torchfree.serve.web").joinpath("page.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", text, flags=re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", text, flags=re.DOTALL)
    csp = ("default-src 'none'; "
           f"script-src {' '.join(map(csp_hash, scripts))}; style-src {' '.join(map(csp_hash, styles))}; "
           "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
    return text.encode("utf-8"), csp


def page_response() -> Response:
    body, csp = page()
    return Response(body, media_type="text/html; charset=utf-8",
                    headers={"content-security-policy": csp, "cache-control": "no-store"})
