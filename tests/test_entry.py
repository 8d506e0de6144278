"""The fast lane of `convirt retrieve` (cli/entry.py) must never disagree with the full CLI: where it takes a
command line it yields the config the typer command + pydantic would, and it leaves every mistake to them."""

from __future__ import annotations

import os
import typing

import pytest
from typer.testing import CliRunner

from convirt_cli.cli import entry
from convirt_cli.cli.main import app, build_command
from convirt_cli.torchfree.config import RetrieveConfig


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


def _full(argv: list[str], monkeypatch) -> dict | None:
    """The config the typer command hands to cli/retrieve.run, or None when the full CLI refuses."""
    seen = []
    monkeypatch.setattr("convirt_cli.cli.retrieve.run", seen.append)
    r = CliRunner().invoke(app, ["retrieve", *argv])
    return seen[0].model_dump() if r.exit_code == 0 and seen else None


def _fast(argv: list[str]) -> dict | None:
    try:
        return vars(entry.fast_config("retrieve", entry.RETRIEVE, argv))
    except entry.Decline:
        return None


TAKEN = [  # the fast lane takes these, and must agree with the full CLI
    (["--query", "pleural effusion", "-k", "5", "--format", "paths"], {}, ""),
    (["-q", "a", "-q", "b", "--index", "idx", "--image", "x.png", "--image", "y.png"], {}, ""),
    (["--query=a", "--k=3", "--exact", "-m", "runs/r", "--threads", "2", "--device", "cpu"], {}, ""),
    (["--queries", "-", "-f", "jsonl", "-o", "page.html", "--backend", "onnx", "--runs-dir", "elsewhere"], {}, ""),
    (["--query", "a"], {"CONVIRT_K": "7", "CONVIRT_DEVICE": "cpu", "CONVIRT_EXACT": "true"}, ""),
    (["--query", "a", "-k", "9"], {"CONVIRT_K": "8"}, 'k = 5\n[retrieve]\nformat = "csv"\n'),  # flag > env > toml
    (["--query", "a"], {}, 'device = "cpu"\n[retrieve]\nk = 4\nquery = ["b", "c"]\n'),
    (["--query", "--index"], {}, ""),  # click takes the next word as the value, whatever it looks like
    (["--like", "3", "--like=0", "--offset", "5", "--where", "view=PA,AP", "--where", "sex!=F;age=40"], {}, ""),
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
    (["--query", "a"], {"CONVIRT_K": "0"}, ""),
    (["--query", "a"], {"CONVIRT_BATCH_SIZE": "-1"}, ""),
    (["--query", "a"], {"CONVIRT_QUERY": "b"}, ""),  # valid (the flag wins); a list in a variable is declined
    (["--query", "a"], {"CONVIRT_DEVICE": "tpu"}, ""),
    (["--query", "a"], {}, "[retrieve]\nnosuch = 1\n"),
    (["--query", "a"], {}, "[retrieve]\nk = 0\n"),
    (["--query", "a"], {}, "[retrieve]\nk = true\n"),  # valid for pydantic (k = 1); declined as a bool
    (["--query", "a"], {}, "k = [\n"),
    (["--query", "a", "--where", "view"], {}, ""),
    (["--query", "a", "--where", "=PA"], {}, ""),
    (["--like", "-1"], {}, ""),
    (["--like", "x"], {}, ""),
    (["--query", "a", "--offset", "-2"], {}, ""),
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
    assert fast is not None and full is not None
    assert fast == full


@pytest.mark.parametrize(("argv", "env", "toml"), DECLINED)
def test_fast_lane_leaves_the_rest_to_the_full_cli(argv, env, toml, monkeypatch, tmp_path):
    _setup(env, toml, monkeypatch, tmp_path)
    assert _fast(argv) is None
    valid = argv[-1] == "-k5" or "CONVIRT_QUERY" in env or "k = true" in toml
    assert (_full(argv, monkeypatch) is not None) == valid


def test_only_retrieve_with_arguments_takes_the_lane(monkeypatch):
    monkeypatch.delenv("CONVIRT_CONFIG", raising=False)
    assert entry._fast(["retrieve"]) is None  # its help
    assert entry._fast(["embed", "x", "--out", "y"]) is None
    assert entry._fast(["--config", "f.toml", "retrieve", "--query", "a"]) is None
    assert entry._fast(["retrieve", "--query", "a"]) is not None
