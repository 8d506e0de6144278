"""Settings precedence: flags > CONVIRT_COMMAND__KEY > CONVIRT_KEY > convirt.toml ([command] > top level) > the
preset's recipe > defaults; only the CLI reads env and file; every bad value is one line naming how it was given."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convirt_cli.cli.settings import resolve
from convirt_cli.torchfree.config import FinetuneConfig, PretrainConfig, RetrieveConfig, apply_recipe
from convirt_cli.torchfree.errors import ConvirtError

ROOT = Path(__file__).resolve().parents[1]


def test_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVIRT_CONFIG", raising=False)
    assert resolve(PretrainConfig, data="d").epochs == 10  # default
    (tmp_path / "convirt.toml").write_text('seed = 5\n[pretrain]\nepochs = 3\nbatch_size = 8\n')
    c = resolve(PretrainConfig, data="d")
    assert (c.epochs, c.batch_size, c.seed) == (3, 8, 5)  # file (section and shared key)
    monkeypatch.setenv("CONVIRT_EPOCHS", "4")
    assert resolve(PretrainConfig, data="d").epochs == 4  # env beats file
    c = resolve(PretrainConfig, data="d", epochs=7, batch_size=None)
    assert (c.epochs, c.batch_size) == (7, 8)  # flags beat env; unset flags change nothing
    assert c.sources()["epochs"] == "flag" and c.sources()["batch_size"] == "toml" and c.sources()["lr"] == "default"


def test_library_configs_ignore_env_and_file(tmp_path, monkeypatch):
    """A developer's CONVIRT_* or convirt.toml must not change what the library (and the tests) do."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "convirt.toml").write_text("[pretrain]\nepochs = 3\n")
    monkeypatch.setenv("CONVIRT_LR", "0.5")
    c = PretrainConfig(data="d")
    assert (c.epochs, c.lr) == (10, 1e-4)


def test_preset_recipe_ranks_between_defaults_and_user_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVIRT_CONFIG", raising=False)
    recipe = {"lr": 5e-3, "text_view": "span", "epochs": 40, "min_steps": 300, "batch_size": 16}
    c = apply_recipe(resolve(PretrainConfig, data="d"), recipe, "preset p")
    assert (c.lr, c.text_view, c.epochs, c.min_steps, c.batch_size) == (5e-3, "span", 40, 300, 16)
    assert c.sources()["lr"] == "preset p" and c.sources()["seed"] == "default"
    (tmp_path / "convirt.toml").write_text("[pretrain]\nlr = 2e-3\n")
    monkeypatch.setenv("CONVIRT_TEXT_VIEW", "report")
    c = apply_recipe(resolve(PretrainConfig, data="d", batch_size=8), recipe, "preset p")
    assert (c.lr, c.text_view, c.batch_size, c.epochs) == (2e-3, "report", 8, 40)
    assert [c.sources()[k] for k in ("lr", "text_view", "batch_size", "epochs")] == ["toml", "env", "flag", "preset p"]
    # choosing the length yourself keeps the preset's minimum out of it
    c = apply_recipe(resolve(PretrainConfig, data="d", epochs=2), recipe, "preset p")
    assert (c.epochs, c.min_steps) == (2, 0)
    with pytest.raises(ValueError, match="not recipe settings"):
        apply_recipe(PretrainConfig(data="d"), {"data": "x"}, "preset p")


def test_run_config_records_each_source(tmp_path, monkeypatch):
    """pretrain with a preset recipe in play: config.json holds the values and where each came from."""
    from convirt_cli.torch.train.loop import pretrain

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVIRT_CONFIG", raising=False)
    preset = json.loads((ROOT / "models" / "tiny.json").read_text())
    preset["train"] = {"lr": 2e-3, "text_view": "span", "epochs": 50, "image_size": 64}
    (tmp_path / "p.json").write_text(json.dumps(preset))
    (tmp_path / "convirt.toml").write_text("[pretrain]\nepochs = 1\n")
    monkeypatch.setenv("CONVIRT_PRETRAIN__LR", "3e-3")
    cfg = resolve(PretrainConfig, data=ROOT / "examples" / "data", model=str(tmp_path / "p.json"), max_steps=2,
                  runs_dir=tmp_path / "runs", name="r", device="cpu", plot=False, batch_size=8)
    run = pretrain(cfg)
    saved = json.loads((run / "config.json").read_text())
    assert (saved["lr"], saved["text_view"], saved["epochs"], saved["image_size"], saved["max_steps"]) == \
        (3e-3, "span", 1, 64, 2)
    assert {k: saved["sources"][k] for k in ("lr", "text_view", "epochs", "max_steps", "seed")} == \
        {"lr": "env", "text_view": "preset p", "epochs": "toml", "max_steps": "flag", "seed": "default"}


@pytest.mark.parametrize(("cls", "flags", "message"), [
    (PretrainConfig, {"batch_size": 0}, "--batch-size 0: input should be greater than or equal to 2"),
    (PretrainConfig, {"lr": -1.0}, "--lr -1.0: input should be greater than 0"),
    (PretrainConfig, {"image_size": 7}, "--image-size 7: input should be greater than or equal to 32"),
    (PretrainConfig, {"image_size": 0}, "--image-size 0"),
    (PretrainConfig, {"epochs": 0}, "--epochs 0: input should be greater than or equal to 1"),
    (PretrainConfig, {"tau": 0.0}, "--tau 0.0: input should be greater than 0"),
    (PretrainConfig, {"lam": 1.5}, "--lam 1.5"),
    (PretrainConfig, {"val_fraction": 1.0}, "--val-fraction 1.0"),
    (PretrainConfig, {"name": "../../x"}, "--name ../../x: '../../x' is not a plain folder name"),
    (PretrainConfig, {"device": "tpu"}, "--device tpu"),
    (PretrainConfig, {"sections": "findings,1mpression"}, "--sections findings,1mpression: '1mpression' is not a report"),
    (PretrainConfig, {"where": ["view"]}, "--where view: 'view' is not COLUMN=VALUE[,VALUE...]"),
    (PretrainConfig, {"where": ["!=CT"]}, "--where !=CT: '!=CT' is not COLUMN=VALUE[,VALUE...] or COLUMN!=VALUE"),
    (RetrieveConfig, {"k": 0}, "--k 0: input should be greater than or equal to 1"),
    (RetrieveConfig, {"k": -5}, "--k -5"),
    (FinetuneConfig, {"label_fraction": "0.0,0.5"}, "label fractions must lie in (0, 1]"),
    (FinetuneConfig, {"name": "a/b"}, "--name a/b"),
])
def test_bad_values_are_one_line_naming_the_flag(tmp_path, monkeypatch, cls, flags, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVIRT_CONFIG", raising=False)
    required = {"data": "d"} if cls is not RetrieveConfig else {}
    with pytest.raises(ConvirtError) as e:
        resolve(cls, **required, **flags)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_env_and_file_errors_name_their_origin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVIRT_CONFIG", raising=False)
    monkeypatch.setenv("CONVIRT_BATCH_SIZE", "-3")
    with pytest.raises(ConvirtError, match="CONVIRT_BATCH_SIZE=-3: input should be greater"):
        resolve(PretrainConfig, data="d")
    monkeypatch.delenv("CONVIRT_BATCH_SIZE")
    (tmp_path / "convirt.toml").write_text("[pretrain]\nepoch = 3\n")
    with pytest.raises(ConvirtError, match=r"\[pretrain\] has unknown keys \['epoch'\]"):
        resolve(PretrainConfig, data="d")
    (tmp_path / "convirt.toml").write_text("[pretrain]\nlr = 0\n")
    with pytest.raises(ConvirtError, match=r"convirt.toml: pretrain.lr = 0: input should be greater than 0"):
        resolve(PretrainConfig, data="d")


def _clean(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    for k in [k for k in os.environ if k.upper().startswith("CONVIRT_")]:
        monkeypatch.delenv(k)


def test_a_commands_variable_beats_the_shared_one(tmp_path, monkeypatch):
    """pydantic-settings' nested form: CONVIRT_PRETRAIN__EPOCHS is pretrain's alone and beats CONVIRT_EPOCHS, as
    [pretrain] epochs beats a top-level epochs; lists in a variable are comma-separated."""
    _clean(monkeypatch, tmp_path)
    (tmp_path / "convirt.toml").write_text("epochs = 5\nseed = 2\n[pretrain]\nepochs = 3\n")
    c = resolve(PretrainConfig, data="d")
    assert (c.epochs, c.seed) == (3, 2)
    monkeypatch.setenv("CONVIRT_EPOCHS", "4")
    monkeypatch.setenv("CONVIRT_PRETRAIN__EPOCHS", "20")
    monkeypatch.setenv("CONVIRT_FINETUNE__EPOCHS", "9")
    monkeypatch.setenv("CONVIRT_PRETRAIN__JOIN", "a.csv,b.csv")
    c = resolve(PretrainConfig, data="d")
    assert (c.epochs, c.join, c.seed) == (20, [Path("a.csv"), Path("b.csv")], 2)
    assert [c.sources()[k] for k in ("epochs", "join", "seed", "lr")] == ["env", "env", "toml", "default"]
    assert resolve(FinetuneConfig, data="d").epochs == 9
    monkeypatch.setenv("CONVIRT_PRETRAIN__BATCH_SIZE", "1")
    with pytest.raises(ConvirtError, match=r"^CONVIRT_PRETRAIN__BATCH_SIZE=1: input should be greater than or equal "
                                           r"to 2$"):
        resolve(PretrainConfig, data="d")


@pytest.mark.parametrize(("env", "toml", "message"), [
    ({"CONVIRT_EPOCH": "3"}, "", "CONVIRT_EPOCH: no command has a setting 'epoch'"),
    ({"CONVIRT_PRETRAIN__EPOCH": "3"}, "", "CONVIRT_PRETRAIN__EPOCH: `convirt pretrain` has no setting 'epoch'"),
    ({"CONVIRT_PRETRAN__EPOCHS": "3"}, "", "CONVIRT_PRETRAN__EPOCHS: no command is called 'pretran'"),
    ({"CONVIRT_CONFIG": "nope.toml"}, "", "CONVIRT_CONFIG=nope.toml: no such file"),
    ({}, "epoch = 3\n", "convirt.toml: unknown key 'epoch'"),
    ({}, "[pretran]\nepochs = 3\n", "convirt.toml: [pretran] is not a command"),
    ({}, "[embed]\nnosuch = 3\n", "convirt.toml: [embed] has unknown keys ['nosuch']"),  # another command's table
    ({}, "[pretrain\n", "convirt.toml: not valid TOML"),
    ({}, "[pretrain]\nwhere = 'view'\n", "convirt.toml: pretrain.where = 'view': 'view' is not COLUMN=VALUE"),
])
def test_unknown_or_bad_settings_are_one_line_naming_their_place(tmp_path, monkeypatch, env, toml, message):
    _clean(monkeypatch, tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if toml:
        (tmp_path / "convirt.toml").write_text(toml)
    with pytest.raises(ConvirtError) as e:
        resolve(PretrainConfig, data="d")
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_a_default_never_overrides_a_file_or_a_variable(tmp_path, monkeypatch):
    """A value equal to the built-in default, written in the file or a variable, is the user's choice: the preset's
    recipe (which ranks above defaults only) must not replace it, and its source says so."""
    _clean(monkeypatch, tmp_path)
    (tmp_path / "convirt.toml").write_text("[pretrain]\nepochs = 10\n")  # 10 is the default
    monkeypatch.setenv("CONVIRT_LR", "0.0001")  # so is 1e-4
    recipe = {"epochs": 40, "lr": 5e-3, "batch_size": 16}
    c = apply_recipe(resolve(PretrainConfig, data="d", batch_size=None), recipe, "preset p")
    assert (c.epochs, c.lr, c.batch_size) == (10, 1e-4, 16)
    assert [c.sources()[k] for k in ("epochs", "lr", "batch_size")] == ["toml", "env", "preset p"]


def test_convirt_config_names_the_file(tmp_path, monkeypatch):
    _clean(monkeypatch, tmp_path)
    (tmp_path / "convirt.toml").write_text("[pretrain]\nepochs = 3\n")
    (tmp_path / "recipe.toml").write_text("[pretrain]\nepochs = 30\n")
    monkeypatch.setenv("CONVIRT_CONFIG", str(tmp_path / "recipe.toml"))
    c = resolve(PretrainConfig, data="d")
    assert (c.epochs, c.sources()["epochs"]) == (30, "toml")


def test_config_flag_reads_a_recipe_file(tmp_path, monkeypatch):
    """`convirt --config FILE ...` reads FILE instead of ./convirt.toml (the bundled recipe, for one)."""
    from typer.testing import CliRunner

    from convirt_cli.cli.main import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONVIRT_CONFIG", "convirt.toml")  # the default; the flag's change is undone after the test
    (tmp_path / "convirt.toml").write_text("[pretrain]\nepochs = 3\n")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[pretrain]\nepochs = 30\nlr = 1e-3\nimage_size = 96\ntext_view = "report"\n')
    res = CliRunner().invoke(app, ["--config", str(recipe), "models"])
    assert res.exit_code == 0, res.output
    c = resolve(PretrainConfig, data="d")
    assert (c.epochs, c.lr, c.image_size, c.text_view) == (30, 1e-3, 96, "report")
    res = CliRunner().invoke(app, ["--config", "nope.toml", "models"])
    assert res.exit_code != 0 and "--config nope.toml: no such file" in str(res.exception)


def _console_script() -> str:
    exe = Path(sys.executable).parent / "convirt"
    if not exe.is_file():
        pytest.fail(f"{exe} missing: install the package (pip install -e .) so its console script exists")
    return str(exe)


@pytest.mark.parametrize(("args", "code", "expect"), [
    (["pretrain", "--nosuchflag"], 2, "No such option: --nosuchflag"),
    (["models", "extra"], 2, "Got unexpected extra argument"),
    (["nosuchcommand"], 2, "No such command"),
    (["retrieve", "-k", "0", "--query", "x"], 2, "error: --k 0: input should be greater than or equal to 1"),
    (["pretrain", "d", "--batch-size", "0"], 2, "error: --batch-size 0"),
    ([], 2, "Usage: convirt"),
    (["pretrain"], 2, "Usage: convirt pretrain"),
    (["embed", "x"], 2, "error: --out is required: pass --out"),
    (["evaluate", "retrieval", "d"], 2, "error: --label-col is required"),
])
def test_console_script_usage_errors(tmp_path, args, code, expect):
    """Through the installed `convirt` script (not only CliRunner): click's usage text or one error line,
    the right exit code, never a traceback."""
    p = subprocess.run([_console_script(), *args], capture_output=True, text=True, cwd=tmp_path, check=False,
                       stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    assert p.returncode == code, out
    assert expect in out, out
    assert "Traceback" not in out, out
