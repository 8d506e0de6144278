"""The `convirt` console entry, with a fast lane for the command shell pipelines call cold.

Typer and pydantic cost ~120 ms of a ~0.4 s `convirt retrieve`, more than the work itself. So a plain
`convirt retrieve` (known flags, values it can check) is parsed here, without either, and handed to the same
function the typer command calls. Its config: with no settings file and no CONVIRT_* variable (a pipeline's usual
case) the flags over RetrieveConfig's defaults, pydantic-free; with either, the one layering (cli/settings.py),
which then pays for pydantic-settings. Anything this parser cannot vouch for (--help, an unknown or malformed
flag, a value out of range or of the wrong type) goes to the full CLI, which owns every message; so the fast lane
never says anything the full CLI would not. tests/test_entry.py keeps the table below equal to RetrieveConfig and
to the typer command's options.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple


class Decline(Exception):
    """Not a case the fast lane vouches for: the full CLI takes it."""


class Field(NamedTuple):
    opts: tuple[str, ...]  # flag spellings (none: settable by env / toml only)
    kind: str  # "value" | "multi" (repeatable) | "flag" (no value)
    check: Callable[[Any], Any]  # the flag's string (a list of them: multi; True: flag) -> the value, or Decline
    default: Any


def _text(v: Any) -> str:
    if type(v) is not str or not v:
        raise Decline
    return v


def _path(v: Any) -> Path:
    return Path(_text(v))


def _count(v: Any, least: int) -> int:
    if type(v) is not str or not v.isascii() or not v.isdigit() or int(v) < least:
        raise Decline
    return int(v)


def _positive(v: Any) -> int:
    return _count(v, 1)


def _nonnegative(v: Any) -> int:
    return _count(v, 0)


def _flag(v: Any) -> bool:
    return v is True


def _slices(v: Any) -> str:
    from convirt_cli.torchfree.formats.slices import parse_slices

    try:
        parse_slices(_text(v))
    except ValueError:
        raise Decline from None
    return v.strip()


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in choices:
            raise Decline
        return v
    check.choices = choices  # type: ignore[attr-defined]
    return check


def _many(item: Callable[[Any], Any]) -> Callable[[Any], list]:
    def check(v: Any) -> list:
        return [item(x) for x in v]
    return check


def _where(v: Any) -> list[str]:
    """--where conditions, checked by the grammar RetrieveConfig uses (data/where.py)."""
    from convirt_cli.torchfree.data.where import where_items

    try:
        return where_items(_many(_text)(v))
    except ValueError:
        raise Decline from None


RETRIEVE: dict[str, Field] = {
    "query": Field(("--query", "-q"), "multi", _many(_text), []),
    "image": Field(("--image",), "multi", _many(_path), []),
    "like": Field(("--like",), "multi", _many(_nonnegative), []),
    "queries": Field(("--queries",), "value", _text, None),
    "index": Field(("--index",), "value", _path, None),
    "k": Field(("--k", "-k"), "value", _positive, 10),
    "offset": Field(("--offset",), "value", _nonnegative, 0),
    "where": Field(("--where",), "multi", _where, []),
    "format": Field(("--format", "-f"), "value", _choice("table", "jsonl", "csv", "paths", "html"), "table"),
    "out": Field(("--out", "-o"), "value", _path, None),
    "null": Field(("--null",), "flag", _flag, False),
    "exact": Field(("--exact",), "flag", _flag, False),
    "slices": Field(("--slices",), "value", _slices, "middle"),
    "model": Field(("--model", "-m"), "value", _text, None),
    "backend": Field(("--backend",), "value", _choice("auto", "onnx", "torch"), "auto"),
    "device": Field(("--device",), "value", _choice("auto", "cpu", "cuda"), "auto"),
    "batch_size": Field((), "value", _positive, 64),
    "threads": Field(("--threads",), "value", _positive, None),
    "workers": Field(("--workers",), "value", _positive, None),
    "runs_dir": Field(("--runs-dir",), "value", _path, Path("runs")),
}


def _flags(argv: list[str], fields: dict[str, Field]) -> dict[str, Any]:
    by_opt = {opt: name for name, f in fields.items() for opt in f.opts}
    raw: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        opt, eq, attached = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        name = by_opt.get(opt)
        if name is None:  # a positional, --help, an unknown flag, -k5: the full CLI's
            raise Decline
        f = fields[name]
        if f.kind == "flag":
            if eq:
                raise Decline
            raw[name] = True
            continue
        if eq:
            value = attached
        elif i < len(argv):
            value, i = argv[i], i + 1
        else:
            raise Decline
        if f.kind == "multi":
            raw.setdefault(name, []).append(value)
        else:
            raw[name] = value
    return raw


def fast_config(argv: list[str]) -> Any:
    """retrieve's config from argv (or Decline): flags over the defaults when there is nothing to layer, else
    settings.resolve on the same flags, exactly as the typer command calls it."""
    flags = {k: RETRIEVE[k].check(v) for k, v in _flags(argv, RETRIEVE).items()}
    from convirt_cli.cli import settings  # cheap: pydantic-settings is imported inside resolve()

    if settings.layered():
        from convirt_cli.torchfree.config import RetrieveConfig

        return settings.resolve(RetrieveConfig, **flags)
    return SimpleNamespace(**{k: f.default for k, f in RETRIEVE.items()} | flags)


def _fast(argv: list[str]) -> Callable[[], None] | None:
    """The work for argv when the fast lane takes it, else None."""
    if len(argv) < 2 or argv[0] != "retrieve":  # `convirt retrieve` alone shows its help
        return None
    try:
        cfg = fast_config(argv[1:])
    except Decline:
        return None

    def work() -> None:
        from convirt_cli.cli.retrieve import run

        run(cfg)
    return work


def run() -> None:
    """Console entry point: the fast lane when it applies, else the typer CLI (cli/main.py); errors.py says how
    either ends."""
    # the hub's and transformers' tqdm bars ("Loading weights ...") would interleave with ours on stderr
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from convirt_cli.cli.errors import user_errors

    with user_errors():
        work = _fast(sys.argv[1:])
        if work is not None:
            work()
            return
    from convirt_cli.cli.main import run as full

    full()
