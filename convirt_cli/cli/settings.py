"""A command's config from its sources, through pydantic-settings: the one layering, used by every command and by
the fast lane of `retrieve` (cli/entry.py) whenever there is something to layer.

    flags > CONVIRT_<COMMAND>__<KEY> > CONVIRT_<KEY> > convirt.toml ([command] table > top-level keys)
          > the preset's recipe (pretrain, applied by the library) > defaults

convirt.toml holds shared top-level keys and one table per command (`--config FILE` or CONVIRT_CONFIG names
another file):

    device = "cpu"
    [pretrain]
    epochs = 20

A variable's command form (CONVIRT_PRETRAIN__EPOCHS) beats its shared form (CONVIRT_EPOCHS), as a [pretrain] key
beats a top-level one. Lists in a variable are comma-separated (CONVIRT_JOIN=a.csv,b.csv), not JSON. No .env files.
Commands pass only the flags the user set (None = unset), so a default never overrides a file or a variable. An
unknown key anywhere in the file, an unknown CONVIRT_* variable or a bad value is one line naming where it was
written. Only the CLI reads these sources: the library takes the plain config this returns.

pydantic-settings takes ~0.1 s to import, so it is imported inside `resolve` only: the fast lane asks `layered()`
first and, with no settings file and no CONVIRT_* variable (a pipeline's usual case), never pays for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from convirt_cli.torchfree.config import Config

C = TypeVar("C", bound="Config")
PREFIX = "CONVIRT_"
DELIMITER = "__"  # CONVIRT_<COMMAND>__<KEY>, pydantic-settings' nested delimiter


def settings_file() -> Path:
    return Path(os.environ.get("CONVIRT_CONFIG", "convirt.toml"))


def variables() -> list[str]:
    """The CONVIRT_* variables set (pydantic-settings matches them case-insensitively)."""
    return [k for k in os.environ if k.upper().startswith(PREFIX)]


def layered() -> bool:
    """Whether a settings file or a CONVIRT_* variable could change a config: without either, flags and defaults
    say it all (and nothing here needs pydantic)."""
    return bool(variables()) or settings_file().is_file()


def sections() -> dict[str, set[str]]:
    """Every command section and the keys it knows (`index` is shared by `index build` and `index merge`)."""
    from convirt_cli.torchfree.config import Config

    out: dict[str, set[str]] = {}
    todo = [Config]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if vars(cls).get("section"):  # a command's own config, not a base or a settings class made below
            out.setdefault(cls.section, set()).update(cls.model_fields)
    return out


def _origin(key: str, value: Any) -> str:
    """A flag as the user typed it, for an error message."""
    shown = ",".join(map(str, value)) if isinstance(value, list) else value
    return f"--{key.replace('_', '-')} {shown}"


def check_variables(known: dict[str, set[str]]) -> None:
    """Every CONVIRT_* variable names a setting: CONVIRT_KEY (some command's) or CONVIRT_COMMAND__KEY."""
    from convirt_cli.torchfree.errors import ConvirtError

    shared = set().union(*known.values())
    for name in variables():
        rest = name[len(PREFIX):].lower()
        section, nested, key = rest.partition(DELIMITER.lower())
        if not nested and (rest in shared or rest == "config"):
            continue
        if nested and key in known.get(section, ()):
            continue
        hint = (f"`convirt {section}` has no setting '{key}'" if nested and section in known else
                f"no command has a setting '{rest}'" if not nested else f"no command is called '{section}'")
        raise ConvirtError(f"{name}: {hint}; see `convirt COMMAND --help` (CONVIRT_KEY or CONVIRT_COMMAND__KEY)")


def check_file(data: dict[str, Any], path: Path, known: dict[str, set[str]]) -> None:
    """Every key of the file is a setting: top-level ones of some command, tables named after commands."""
    from convirt_cli.torchfree.errors import ConvirtError

    shared = set().union(*known.values())
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in known:
                raise ConvirtError(f"{path}: [{key}] is not a command (tables: {', '.join(sorted(known))})")
            unknown = sorted(set(value) - known[key])
            if unknown:
                raise ConvirtError(f"{path}: [{key}] has unknown keys {unknown}; see `convirt {key} --help`")
        elif key not in shared:
            raise ConvirtError(f"{path}: unknown key '{key}' (a top-level key is a setting some command has; "
                               "a command's own go in its [table])")


def _settings_class(cls: type[C], seen: dict[str, tuple[str, str]], known: dict[str, set[str]]) -> type:
    """`cls` as a pydantic-settings class whose sources, in priority order, record for each key the source and the
    spelling of the value kept: seen[key] = ("env", "CONVIRT_PRETRAIN__EPOCHS=20")."""
    import tomllib

    from pydantic_settings import (
        BaseSettings,
        EnvSettingsSource,
        SettingsConfigDict,
        TomlConfigSettingsSource,
    )

    from convirt_cli.torchfree.errors import ConvirtError

    section = cls.section

    class Env(EnvSettingsSource):
        def __call__(self) -> dict[str, Any]:
            values = super().__call__()
            names = {k.upper(): k for k in os.environ}
            for key, value in values.items():
                name = names.get(f"{self.env_prefix}{key}".upper(), f"{self.env_prefix}{key}".upper())
                seen.setdefault(key, ("env", f"{name}={value}"))
            return values

    class Toml(TomlConfigSettingsSource):
        def _read_file(self, file_path: Path) -> dict[str, Any]:
            try:
                data = tomllib.loads(Path(file_path).read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise ConvirtError(f"{file_path}: not valid TOML ({e}); fix or remove it") from None
            check_file(data, Path(file_path), known)
            fields = cls.model_fields
            shared = {k: v for k, v in data.items() if k in fields and not isinstance(v, dict)}
            own = {k: v for k, v in data.get(section, {}).items() if k in fields}
            self.origins = {k: f"{file_path}: {k} = {v!r}" for k, v in shared.items()}
            self.origins |= {k: f"{file_path}: {section}.{k} = {v!r}" for k, v in own.items()}
            return shared | own

        def __call__(self) -> dict[str, Any]:
            values = super().__call__()
            for key in values:
                seen.setdefault(key, ("toml", self.origins[key]))
            return values

    class Settings(BaseSettings, cls):  # type: ignore[misc, valid-type]
        model_config = SettingsConfigDict(env_prefix=PREFIX, enable_decoding=False, extra="forbid")

        @classmethod
        def settings_customise_sources(cls_, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            path = settings_file()
            by_command = Env(settings_cls, env_prefix=f"{PREFIX}{section.upper()}{DELIMITER}")
            shared = Env(settings_cls, env_prefix=PREFIX)
            return (init_settings, by_command, shared) + ((Toml(settings_cls, toml_file=path),) if path.is_file() else ())

    Settings.__name__ = Settings.__qualname__ = f"{cls.__name__}Settings"
    return Settings


def resolve(cls: type[C], **flags: Any) -> C:
    """The command's config from flags (None = unset), CONVIRT_* variables and the settings file, with the source
    of every value (`cfg.sources()`); a bad or unknown setting is one line naming where it was written."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from convirt_cli.torchfree.errors import ConvirtError

    given = {k: v for k, v in flags.items() if v is not None}
    if "CONVIRT_CONFIG" in os.environ and not settings_file().is_file():
        raise ConvirtError(f"CONVIRT_CONFIG={os.environ['CONVIRT_CONFIG']}: no such file")
    known = sections()
    check_variables(known)
    seen = {k: ("flag", _origin(k, v)) for k, v in given.items()}  # flags first: they outrank every source
    try:
        settings = _settings_class(cls, seen, known)(**given)
    except ValidationError as e:
        raise _one_line(e, cls, seen) from None
    except SettingsError as e:
        raise ConvirtError(f"{e}") from None
    values = {k: getattr(settings, k) for k in settings.model_fields_set}
    return cls.model_validate(values).with_sources({k: seen[k][0] for k in values})


def _one_line(e: Any, cls: type[Config], seen: dict[str, tuple[str, str]]) -> Exception:
    from convirt_cli.torchfree.errors import ConvirtError

    err = e.errors()[0]
    key = str(err["loc"][0]) if err["loc"] else ""
    msg = err["msg"].removeprefix("Value error, ")
    if key in seen:
        return ConvirtError(f"{seen[key][1]}: {msg[:1].lower() + msg[1:]}")
    if err["type"] == "missing":
        flag = "--" + key.replace("_", "-")
        return ConvirtError(f"{flag} is required: pass {flag} (or set {PREFIX}{key.upper()}, or {key} in "
                            f"[{cls.section}] of {settings_file()}); see `convirt {cls.section} --help`")
    return ConvirtError(msg)

