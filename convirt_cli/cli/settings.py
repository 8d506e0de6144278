"""Fill a command's config from its sources: flags > CONVIRT_* environment > convirt.toml > (preset) > defaults.

convirt.toml may hold shared top-level keys and one table per command:

    device = "cpu"
    [pretrain]
    epochs = 20
    batch_size = 64

`convirt --config FILE` reads another file (CONVIRT_CONFIG names it). Commands pass only the flags the user
set (None = unset), so a default never overrides a file or a variable. Only the CLI reads these sources.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from convirt_cli.torchfree.config import Config
from convirt_cli.torchfree.errors import ConvirtError

C = TypeVar("C", bound=Config)


def settings_file() -> Path:
    return Path(os.environ.get("CONVIRT_CONFIG", "convirt.toml"))


def _toml_values(cls: type[Config]) -> dict[str, Any]:
    """Top-level keys the command knows, then its own [section] (which must only hold known keys)."""
    path = settings_file()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConvirtError(f"{path}: not valid TOML ({e}); fix or remove it") from None
    fields = cls.model_fields
    out = {k: v for k, v in data.items() if k in fields and not isinstance(v, dict)}
    table = data.get(cls.section, {})
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConvirtError(f"{path}: [{cls.section}] has unknown keys {unknown}; see `convirt {cls.section} --help`")
    return out | table


def _env_values(cls: type[Config]) -> dict[str, str]:
    return {k: os.environ[f"CONVIRT_{k.upper()}"] for k in cls.model_fields if f"CONVIRT_{k.upper()}" in os.environ}


def _origin(key: str, source: str, value: Any) -> str:
    """How the user wrote a setting, for an error message."""
    if source == "flag":
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        return f"--{key.replace('_', '-')} {shown}"
    if source == "env":
        return f"CONVIRT_{key.upper()}={value}"
    if source == "toml":
        return f"{settings_file()}: {key} = {value!r}"
    return f"setting '{key}'"


def resolve(cls: type[C], **flags: Any) -> C:
    """The command's config from flags (None = unset), env and file; a bad value is one line naming its origin."""
    layers = [("toml", _toml_values(cls)), ("env", _env_values(cls)),
              ("flag", {k: v for k, v in flags.items() if v is not None})]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        values |= layer
        sources |= {k: source for k in layer}
    try:
        cfg = cls.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        msg = err["msg"].removeprefix("Value error, ")
        if key in values:
            raise ConvirtError(f"{_origin(key, sources[key], values[key])}: {msg[:1].lower() + msg[1:]}") from None
        if err["type"] == "missing":
            flag = "--" + key.replace("_", "-")
            raise ConvirtError(f"{flag} is required: pass {flag} (or set CONVIRT_{key.upper()}, or {key} in "
                               f"{settings_file()}); see `convirt {cls.section} --help`") from None
        raise ConvirtError(f"{msg}") from None
    return cfg.with_sources(sources)
