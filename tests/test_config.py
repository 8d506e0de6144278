"""Settings precedence: flags > CONVIRT_* env > convirt.toml > defaults."""

import pytest

from convirt_cli.torchfree.config import PretrainConfig
from convirt_cli.torchfree.errors import ConvirtError


def test_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert PretrainConfig.resolve(data="d").epochs == 10  # default
    (tmp_path / "convirt.toml").write_text('seed = 5\n[pretrain]\nepochs = 3\nbatch_size = 8\n')
    c = PretrainConfig.resolve(data="d")
    assert (c.epochs, c.batch_size, c.seed) == (3, 8, 5)  # file (section and shared key)
    monkeypatch.setenv("CONVIRT_EPOCHS", "4")
    assert PretrainConfig.resolve(data="d").epochs == 4  # env beats file
    c = PretrainConfig.resolve(data="d", epochs=7, batch_size=None)
    assert (c.epochs, c.batch_size) == (7, 8)  # flags beat env; unset flags change nothing


def test_bad_values_name_the_setting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConvirtError, match="setting 'device'"):
        PretrainConfig.resolve(data="d", device="tpu")
    (tmp_path / "convirt.toml").write_text("[pretrain]\nepoch = 3\n")
    with pytest.raises(ConvirtError, match=r"\[pretrain\] has unknown keys \['epoch'\]"):
        PretrainConfig.resolve(data="d")


def test_config_flag_reads_a_recipe_file(tmp_path, monkeypatch):
    """`convirt --config FILE ...` reads FILE instead of ./convirt.toml (the bundled recipe, for one)."""
    from pathlib import Path

    from typer.testing import CliRunner

    from convirt_cli.cli.main import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONVIRT_CONFIG", "convirt.toml")  # the default; the flag's change is undone after the test
    (tmp_path / "convirt.toml").write_text("[pretrain]\nepochs = 3\n")
    recipe = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"
    res = CliRunner().invoke(app, ["--config", str(recipe), "models"])
    assert res.exit_code == 0, res.output
    c = PretrainConfig.resolve(data="d")
    assert (c.epochs, c.lr, c.image_size, c.text_view) == (30, 1e-3, 96, "report")
    res = CliRunner().invoke(app, ["--config", "nope.toml", "models"])
    assert res.exit_code != 0 and "--config nope.toml: no such file" in str(res.exception)

