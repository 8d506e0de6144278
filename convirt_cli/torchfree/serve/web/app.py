"""The routes of `convirt serve`: a JSON API over a Searcher, an item's image by its id, and the search page.

    GET  /                              the page (page.html; the search in the URL: /?q=pleural+effusion)
    GET  /api/health                    {"status": "ok"} (the one route open without the token)
    GET  /api/indexes                   each index: name, model, kind, count, columns
    GET  /api/search?q=TEXT | like=ID [&from=INDEX] [&index=NAME] [&k=10] [&offset=0] [&where=COL=V1,V2]...
    POST /api/search                    the same with an image: multipart field `image`, or the raw body
    GET  /api/items/ID[?index=NAME]     an item: id, kind, columns (the index's allow-list), report text
    GET  /api/items/ID/thumbnail        JPEG, <= 256 px;  GET /api/items/ID/image: PNG, <= 1024 px
    GET  /api/openapi.json              this API as OpenAPI 3.1

Every failure is JSON `{"error": one line, "status": code}`: 400 a bad parameter or image, 404 an unknown route,
index or item, 405 a wrong method, 413 a body over the cap, 415 not an image. A bug is a 500 with the same shape
and no traceback (the log says which route failed). Nothing leaves but ids, scores, the columns `embed
--columns` stored and report texts: no path, source or file name, of an item or an upload. The Searcher work runs
in the thread pool, so the event loop keeps accepting while the model and the scan run; one search at a time (the
model and the scan each use every core already: concurrent ones only fought over the cores, and 32 clients got a
third of one client's queries/s in benchmarks/serve_bench.py). The others wait their turn without holding a thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.serve.searcher import Query, Searcher
from convirt_cli.torchfree.serve.web.guard import BodyTooLarge
from convirt_cli.torchfree.serve.web.media import Media, Unreadable
from convirt_cli.torchfree.serve.web.page import page_response
from convirt_cli.torchfree.serve.web.params import (
    BadRequest,
    SearchParams,
    index_param,
    no_params,
    search_params,
)
from convirt_cli.torchfree.serve.web.upload import read_upload

FILTER_VALUES = 50  # /api/indexes lists a column's values when it has at most this many (the page's filters)
PHRASES = {400: "bad request", 401: "unauthorized", 403: "forbidden", 404: "no such route", 405: "method not allowed",
           413: "request body too large", 415: "unsupported media type"}


class Service:
    """What the routes share: the Searcher, the renders of item images, and refresh() once per request."""

    def __init__(self, searcher: Searcher, log: Callable[[str], None] | None = None):
        self.searcher, self.log = searcher, log or (lambda line: None)
        self.media = Media(getattr(searcher.encoder, "pre", {}).get("window", "auto"))
        self._refresh_lock = threading.Lock()
        self._refusals: dict[str, str] = {}

    def warm(self) -> None:
        """Build the model's sessions now (a text and an image query), so the first client does not wait for them."""
        import numpy as np

        enc = self.searcher.encoder
        if getattr(enc, "has_text", True):
            enc.encode_texts(["warm up"])
        enc.encode_images([np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)])
        self.indexes()  # each index's columns read now too

    def refresh(self) -> None:
        """Pick up an index changed in place (`embed --append`, a rebuild): one stat per index. A change that
        cannot be opened (another model, damaged) keeps the old files serving and is logged once."""
        with self._refresh_lock:
            try:
                for name in self.searcher.refresh():
                    self.log(f"index '{name}' changed: now {self.searcher.index(name).count} items")
                    self._refusals.pop(name, None)
            except ConvirtError as e:
                line = self.scrub(str(e))
                if line not in self._refusals.values():
                    self.log(f"warning: an index changed but cannot be reopened, still serving the old one: {line}")
                    self._refusals[line] = line

    def scrub(self, message: str) -> str:
        """A library message for a client: each open index's folder (a server path) becomes its name."""
        s = self.searcher
        for name in s.names:
            message = message.replace(str(s.index(name).path), f"index '{name}'")
        return message.replace(str(s.encoder.path), "the model")

    def name(self, index: str | None) -> str:
        if index is None:
            return self.searcher.names[0]
        if index not in self.searcher.names:
            raise BadRequest(f"no index named {index[:60]!r} (open: {', '.join(self.searcher.names)})", status=404)
        return index

    def item(self, item_id: int, index: str | None, refresh: bool = False) -> tuple[str, dict]:
        """Item `item_id` of an index; with `refresh`, of the index as it is on disk now (a route's own lookup)."""
        if refresh:
            self.refresh()
        name = self.name(index)
        try:
            return name, self.searcher.item(item_id, name)
        except ConvirtError:
            raise BadRequest(f"index '{name}' has no item {item_id}", status=404) from None

    def item_json(self, name: str, item: dict) -> dict:
        """What a client sees of an item: never its path or source."""
        base = f"/api/items/{item['id']}"
        at = "" if name == self.searcher.names[0] else f"?index={quote(name, safe='')}"
        out = {"id": item["id"], "index": name, "kind": self.searcher.index(name).meta["kind"],
               "columns": dict(item.get("columns") or {}), "url": base + at}
        if "text" in item:
            out["text"] = item["text"]
        if "path" in item:
            out |= {"thumbnail": f"{base}/thumbnail{at}", "image": f"{base}/image{at}"}
            if item.get("slice") is not None:
                out["slice"] = item["slice"]
        else:
            out |= {"thumbnail": None, "image": None}
        return out

    def indexes(self) -> list[dict]:
        self.refresh()
        s = self.searcher
        return [{"name": n, "kind": s.index(n).meta["kind"], "count": s.index(n).count, "columns": s.columns(n, values=FILTER_VALUES),
                 "model": model_name(s.index(n).meta.get("model", "")), "fingerprint": s.index(n).meta["fingerprint"],
                 "dim": int(s.index(n).meta["dim"])} for n in s.names]

    def search(self, p: SearchParams, image: bytes | None = None) -> dict:
        self.refresh()
        name = self.name(p.index)
        if p.like is not None:
            source, _ = self.item(p.like, p.like_from)
            query = Query(like=p.like, like_index=source)
        else:
            query = Query(text=p.q) if image is None else Query(image=image, name="upload")
        try:
            (res,) = self.searcher.search(query, k=p.k + 1, offset=p.offset, where=list(p.where), index=name)
        except ConvirtError as e:
            raise BadRequest(self.scrub(str(e))) from None
        hits = res["hits"][:p.k]
        shown = {"image": "upload"} if image is not None else res["query"]
        return {"index": name, "query": shown, "k": p.k, "offset": p.offset, "where": list(p.where),
                "hits": [{"rank": h["rank"], "score": round(h["score"], 6)} | self.item_json(name, h["item"])
                         for h in hits],
                "more": len(res["hits"]) > p.k}


def model_name(path: str) -> str:
    """How a client sees the model: its run's folder name (never the server's path)."""
    p = Path(str(path))
    return p.parent.name if p.name == "onnx" else p.name


def _pairs(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


def build_app(service: Service) -> Starlette:
    """The Starlette app (guard.Guard wraps it: hosts, origins, token, body cap, headers, log)."""
    turn = asyncio.Semaphore(1)  # one search at a time (the module's docstring says why)

    async def searched(p: SearchParams, image: bytes | None = None) -> Response:
        async with turn:
            return JSONResponse(await run_in_threadpool(service.search, p, image))

    async def page(request: Request) -> Response:
        return page_response()

    async def health(request: Request) -> Response:
        no_params(_pairs(request))
        return JSONResponse({"status": "ok", "indexes": len(service.searcher.names)})

    async def indexes(request: Request) -> Response:
        no_params(_pairs(request))
        return JSONResponse({"indexes": await run_in_threadpool(service.indexes)})

    async def search(request: Request) -> Response:
        if request.method == "POST":
            data, fields = await read_upload(request)
            return await searched(search_params(_pairs(request) + fields, image=True), data)
        return await searched(search_params(_pairs(request)))

    async def lookup(request: Request) -> tuple[str, dict]:
        """The item a route names, in the threadpool: reopening a changed index must not stall the event loop."""
        return await run_in_threadpool(service.item, request.path_params["item_id"], index_param(_pairs(request)),
                                       True)

    async def item(request: Request) -> Response:
        name, it = await lookup(request)
        return JSONResponse(service.item_json(name, it))

    async def media(request: Request) -> Response:
        kind = request.url.path.rsplit("/", 1)[1]
        name, it = await lookup(request)
        if "path" not in it:
            raise BadRequest(f"item {it['id']} of index '{name}' is a text: it has no image", status=404)
        try:
            out = await run_in_threadpool(service.media.render, it, kind)
        except Unreadable as e:
            service.log(f"warning: item {it['id']} of index '{name}': {e}")
            raise BadRequest(f"item {it['id']} of index '{name}': {e}", status=404) from None
        headers = {"etag": out.etag, "cache-control": "private, no-cache"}
        if request.headers.get("if-none-match") == out.etag:
            return Response(status_code=304, headers=headers)
        return Response(out.body, media_type=out.media_type, headers=headers)

    async def openapi(request: Request) -> Response:
        from convirt_cli.torchfree.serve.web.openapi import document

        return JSONResponse(document())

    routes = [Route("/", page, methods=["GET"]), Route("/api/health", health, methods=["GET"]),
              Route("/api/indexes", indexes, methods=["GET"]), Route("/api/search", search, methods=["GET", "POST"]),
              Route("/api/items/{item_id:int}", item, methods=["GET"]),
              Route("/api/items/{item_id:int}/thumbnail", media, methods=["GET"]),
              Route("/api/items/{item_id:int}/image", media, methods=["GET"]),
              Route("/api/openapi.json", openapi, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers=_handlers(service))


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _handlers(service: Service) -> dict:
    async def bad(request: Request, exc: BadRequest) -> Response:
        return _error(exc.status, str(exc))

    async def too_large(request: Request, exc: BodyTooLarge) -> Response:
        return _error(413, str(exc), {"connection": "close"})

    async def http(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail not in ("Not Found", "Method Not Allowed") \
            else PHRASES.get(exc.status_code, "error")
        if exc.status_code == 404:
            detail = f"no such route: {request.method} {request.url.path[:100]} (the API is under /api: see " \
                     "/api/openapi.json)"
        return _error(exc.status_code, detail, exc.headers)

    async def bug(request: Request, exc: Exception) -> Response:
        service.log(f"error: {request.method} {request.url.path[:100]} failed: {type(exc).__name__}")
        return _error(500, "internal error (the server's log names the route); the request may be retried")

    return {BadRequest: bad, BodyTooLarge: too_large, HTTPException: http, Exception: bug}
