"""The API's query parameters, checked strictly: an unknown or repeated name, a number out of range or two kinds
of query at once is a 400 with one line saying which parameter and what it takes, before any work."""

from __future__ import annotations

from dataclasses import dataclass

MAX_K = 100  # results per page
MAX_OFFSET = 10_000  # how deep a page may start
MAX_TEXT = 1_000  # characters of a text query
SEARCH = ("q", "like", "from", "index", "k", "offset", "where")
REPEATABLE = ("where",)


class BadRequest(Exception):
    """A client mistake: status (4xx) and one line (no path, no traceback)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SearchParams:
    q: str | None = None
    like: int | None = None
    like_from: str | None = None  # the index holding item `like` (the `from` parameter; default: `index`)
    index: str | None = None
    k: int = 10
    offset: int = 0
    where: tuple[str, ...] = ()


def _single(pairs: list[tuple[str, str]], allowed: tuple[str, ...]) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    for key, value in pairs:
        if key not in allowed:
            raise BadRequest(f"unknown parameter {key[:40]!r} (this route takes {', '.join(allowed) or 'none'})")
        got.setdefault(key, []).append(value)
    for key, values in got.items():
        if len(values) > 1 and key not in REPEATABLE:
            raise BadRequest(f"parameter {key!r} given {len(values)} times: give it once")
    return got


def whole(name: str, value: str, lo: int, hi: int) -> int:
    if not (value.isascii() and value.isdigit()) or not lo <= int(value) <= hi:
        raise BadRequest(f"{name} {value[:40]!r}: a whole number from {lo} to {hi}")
    return int(value)


def search_params(pairs: list[tuple[str, str]], image: bool = False) -> SearchParams:
    """GET /api/search's (or POST's, with `image` the upload) parameters."""
    got = _single(pairs, SEARCH)
    one = {k: v[0] for k, v in got.items()}
    q = one.get("q")
    if q is not None and not q.strip():
        raise BadRequest("q is empty: give some words, or an image, or like=ID")
    if q is not None and len(q) > MAX_TEXT:
        raise BadRequest(f"q is {len(q)} characters: at most {MAX_TEXT}")
    like = whole("like", one["like"], 0, 2**62) if "like" in one else None
    kinds = [name for name, given in (("q", q is not None), ("like", like is not None), ("image", image)) if given]
    if len(kinds) != 1:
        raise BadRequest("a search is one of q=TEXT, like=ID or an uploaded image"
                         + (f" (got {' and '.join(kinds)})" if kinds else " (got none)"))
    if "from" in one and like is None:
        raise BadRequest("from names the index of a like=ID item: give like too")
    where = tuple(w for w in got.get("where", []))
    if any(not w.strip() for w in where):
        raise BadRequest("where is empty: give COLUMN=VALUE[,VALUE] or COLUMN!=VALUE (e.g. view=PA,AP)")
    return SearchParams(q=q, like=like, like_from=one.get("from"), index=one.get("index"),
                        k=whole("k", one["k"], 1, MAX_K) if "k" in one else 10,
                        offset=whole("offset", one["offset"], 0, MAX_OFFSET) if "offset" in one else 0, where=where)


def index_param(pairs: list[tuple[str, str]]) -> str | None:
    """The items routes' one parameter: which index (default: the first)."""
    return (_single(pairs, ("index",)).get("index") or [None])[0]


def no_params(pairs: list[tuple[str, str]]) -> None:
    _single(pairs, ())
