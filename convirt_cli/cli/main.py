"""The `convirt` command. Sub-commands are built on demand: `convirt retrieve` imports and parses retrieve's
options only (start-up is part of the promise for shell pipelines), `convirt --help` builds them all."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated

import typer
import typer.core
import typer.main

from convirt_cli.torchfree.errors import ConvirtError

# name -> (module in convirt_cli.cli.commands, function or sub-app, no_args_is_help)
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "pretrain": ("pretrain", "pretrain", True),
    "finetune": ("finetune", "finetune", True),
    "shard": ("shard", "shard", True),
    "export": ("export", "export", False),
    "embed": ("embed", "embed", True),
    "retrieve": ("retrieve", "retrieve", True),
    "serve": ("serve", "serve", False),
    "index": ("index", "app", True),
    "evaluate": ("evaluate", "app", True),
    "classify": ("classify", "classify", True),
    "explain": ("explain", "explain", True),
    "models": ("models", "models", False),
}


def build_command(name: str):
    """The click command for `name`, from its module in convirt_cli/cli/commands."""
    module, attr, no_args_is_help = COMMANDS[name]
    obj = getattr(importlib.import_module(f"convirt_cli.cli.commands.{module}"), attr)
    if isinstance(obj, typer.Typer):  # a group of sub-commands (even of one: `index build`)
        cmd = typer.main.get_group(obj)
    else:
        one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        one.command(name, no_args_is_help=no_args_is_help)(obj)
        cmd = typer.main.get_command(one)
    cmd.name = name
    return cmd


class LazyGroup(typer.core.TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self.commands:
            self.commands[cmd_name] = build_command(cmd_name)
        return self.commands[cmd_name]


app = typer.Typer(
    name="convirt",
    cls=LazyGroup,
    help="Learn medical image encoders from images paired with reports (ConVIRT, RAD-DINO), export and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(config: Annotated[Path | None, typer.Option(
        "--config", help="Settings file to read instead of ./convirt.toml (CONVIRT_CONFIG may name it too).")] = None) -> None:
    """Learn medical image encoders from images paired with reports (ConVIRT, RAD-DINO), export and serve them."""
    if config is not None:
        if not config.is_file():
            raise ConvirtError(f"--config {config}: no such file")
        os.environ["CONVIRT_CONFIG"] = str(config)  # read by cli.settings.settings_file() in this process only


def run() -> None:
    """The full CLI (entry.run calls it for everything its fast lane does not take); errors.py maps how it ends:
    a user mistake is one line on stderr, a usage mistake click's usage text, never a traceback for either."""
    from convirt_cli.cli.errors import finish, user_errors

    with user_errors():
        code = app(standalone_mode=False)
    finish(code)
