"""The fast lane of `convirt retrieve` (cli/entry.py) must never disagree with the full CLI: where it takes a
command line it yields the config the typer command + settings.resolve would (by calling resolve itself when there
is a settings file or a CONVIRT_* variable), and it leaves every mistake on the command line to them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from convirt_cli.cli import entry
from convirt_cli.cli.main import app, build_command
from convirt_cli.torchfree.config import RetrieveConfig
from convirt_cli.torchfree.errors import ConvirtError

ROOT = Path(__file__).resolve().parents[1]


def test_table_matches_the_config_and_the_command():
    fields = RetrieveConfig.model_fields
    assert set(entry.RETRIEVE) == set(fields)
    for name, f in entry.RETRIEVE.items():
        assert f.default == fields[name].default, name
        choices = getattr(f.check, "choices", None)
        if choices is not None:
            assert set(choices) == set(typing.get_args(fields[name].annotation)), name
    params = {p.name: {*p.opts, *p.secondary_opts} for p in build_command("retrieve").params if p.name != "help"}
    assert params == {n: set(f.opts) for n, f in entry.RETRIEVE.items() if f.opts}
    flags = {p.name for p in build_command("retrieve").params if getattr(p, "is_flag", False) and p.name != "help"}
    assert flags == {n for n, f in entry.RETRIEVE.items() if f.kind == "flag"}


def _full(argv: list[str], monkeypatch) -> dict | Exception | None:
    """The config the typer command hands to cli/retrieve.run, the error it raised, or None (a usage error)."""
    seen = []
    monkeypatch.setattr("convirt_cli.cli.retrieve.run", seen.append)
    r = CliRunner().invoke(app, ["retrieve", *argv])
    if isinstance(r.exception, ConvirtError):
        return r.exception
    return seen[0].model_dump() if r.exit_code == 0 and seen else None


def _fast(argv: list[str]) -> dict | Exception | None:
    try:
        cfg = entry.fast_config(argv)
    except entry.Decline:
        return None
    except ConvirtError as e:
        return e
    return cfg.model_dump() if isinstance(cfg, RetrieveConfig) else vars(cfg)


TAKEN = [  # the fast lane takes these, and must agree with the full CLI
    (["--query", "pleural effusion", "-k", "5", "--format", "paths"], {}, ""),
    (["-q", "a", "-q", "b", "--index", "idx", "--image", "x.png", "--image", "y.png"], {}, ""),
    (["--query=a", "--k=3", "--exact", "-m", "runs/r", "--threads", "2", "--device", "cpu"], {}, ""),
    (["--queries", "-", "-f", "jsonl", "-o", "page.html", "--backend", "onnx", "--runs-dir", "elsewhere"], {}, ""),
    (["--query", "a"], {"CONVIRT_K": "7", "CONVIRT_DEVICE": "cpu", "CONVIRT_EXACT": "true"}, ""),
    (["--query", "a", "-k", "9"], {"CONVIRT_K": "8"}, 'k = 5\n[retrieve]\nformat = "csv"\n'),  # flag > env > toml
    (["--query", "a"], {}, 'device = "cpu"\n[retrieve]\nk = 4\nquery = ["b", "c"]\n'),
    (["--query", "a"], {"CONVIRT_RETRIEVE__K": "6", "CONVIRT_K": "8"}, ""),  # the command's variable wins
    (["--query", "--index"], {}, ""),  # click takes the next word as the value, whatever it looks like
    (["--like", "3", "--like=0", "--offset", "5", "--where", "view=PA,AP", "--where", "sex!=F;age=40"], {}, ""),
    (["--query", "a"], {"CONVIRT_QUERY": "b"}, ""),  # not a list, but the flag wins
    (["--query", "a"], {}, "[retrieve]\nk = true\n"),  # pydantic's k = 1
    (["--query", "a", "--where", "view=PA"], {"CONVIRT_RETRIEVE__OFFSET": "2"}, ""),
]
DECLINED = [  # the fast lane leaves these to the full CLI (most are mistakes it explains in one line)
    (["--query", "a", "-k", "0"], {}, ""),
    (["--query", "a", "-k", "-5"], {}, ""),
    (["--query", "a", "-k", "five"], {}, ""),
    (["--query", "a", "--format", "xml"], {}, ""),
    (["--query", "a", "--nosuchflag"], {}, ""),
    (["--query", "a", "extra"], {}, ""),
    (["--query"], {}, ""),
    (["--query", "a", "--help"], {}, ""),
    (["--query", "a", "-k5"], {}, ""),  # valid (click's attached short value); declined all the same
    (["--query", "a", "--exact=1"], {}, ""),
    (["--query", "a", "-k", "0"], {"CONVIRT_DEVICE": "cpu"}, ""),  # with something to layer too
    (["--query", "a", "--where", "view"], {}, ""),
    (["--query", "a", "--where", "=PA"], {}, ""),
    (["--like", "-1"], {}, ""),
    (["--like", "x"], {}, ""),
    (["--query", "a", "--offset", "-2"], {}, ""),
]
REFUSED = [  # a bad setting outside the command line: the fast lane says what the full CLI says, in one line
    (["--query", "a"], {"CONVIRT_K": "0"}, ""),
    (["--query", "a"], {"CONVIRT_RETRIEVE__BATCH_SIZE": "-1"}, ""),
    (["--query", "a"], {"CONVIRT_DEVICE": "tpu"}, ""),
    (["--query", "a"], {"CONVIRT_RETRIEVE__KK": "3"}, ""),
    (["--query", "a"], {}, "[retrieve]\nnosuch = 1\n"),
    (["--query", "a"], {}, "[retrieve]\nk = 0\n"),
    (["--query", "a"], {}, "k = [\n"),
]


def _setup(env: dict, toml: str, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    for k in [k for k in os.environ if k.startswith("CONVIRT_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if toml:
        (tmp_path / "convirt.toml").write_text(toml)


@pytest.mark.parametrize(("argv", "env", "toml"), TAKEN)
def test_fast_lane_gives_the_full_clis_config(argv, env, toml, monkeypatch, tmp_path):
    _setup(env, toml, monkeypatch, tmp_path)
    fast, full = _fast(argv), _full(argv, monkeypatch)
    assert isinstance(fast, dict) and isinstance(full, dict)
    assert fast == full


@pytest.mark.parametrize(("argv", "env", "toml"), DECLINED)
def test_fast_lane_leaves_the_rest_to_the_full_cli(argv, env, toml, monkeypatch, tmp_path):
    _setup(env, toml, monkeypatch, tmp_path)
    assert _fast(argv) is None
    assert isinstance(_full(argv, monkeypatch), dict) == (argv[-1] == "-k5")


@pytest.mark.parametrize(("argv", "env", "toml"), REFUSED)
def test_fast_lane_refuses_a_bad_setting_as_the_full_cli_does(argv, env, toml, monkeypatch, tmp_path):
    _setup(env, toml, monkeypatch, tmp_path)
    fast, full = _fast(argv), _full(argv, monkeypatch)
    assert isinstance(fast, ConvirtError) and isinstance(full, ConvirtError)
    assert str(fast) == str(full) and "\n" not in str(fast)


WHAT_IT_IMPORTS = """
import json, sys
from convirt_cli.cli import entry
entry.fast_config(["--query", "a", "-k", "3"])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"pydantic", "pydantic_settings", "typer", "click"})))
"""


def test_fast_lane_pays_for_pydantic_settings_only_with_something_to_layer(tmp_path):
    """Nothing to layer (no convirt.toml, no CONVIRT_* variable): neither typer nor pydantic (nor pydantic-settings)
    is imported; a convirt.toml or a variable brings in pydantic-settings, never typer."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CONVIRT_")} | {"PYTHONPATH": str(ROOT)}

    def imported(extra: dict[str, str]) -> list[str]:
        p = subprocess.run([sys.executable, "-c", WHAT_IT_IMPORTS], capture_output=True, text=True, cwd=tmp_path,
                           env=env | extra, check=True)
        return json.loads(p.stdout)

    assert imported({}) == []
    assert imported({"CONVIRT_RETRIEVE__K": "4"}) == ["pydantic", "pydantic_settings"]
    (tmp_path / "convirt.toml").write_text("[retrieve]\nk = 4\n")
    assert imported({}) == ["pydantic", "pydantic_settings"]


def test_only_retrieve_with_arguments_takes_the_lane(monkeypatch, tmp_path):
    _setup({}, "", monkeypatch, tmp_path)
    assert entry._fast(["retrieve"]) is None  # its help
    assert entry._fast(["embed", "x", "--out", "y"]) is None
    assert entry._fast(["--config", "f.toml", "retrieve", "--query", "a"]) is None
    assert entry._fast(["retrieve", "--query", "a"]) is not None
