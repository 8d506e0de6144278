"""The `convirt` command: one sub-command per module in convirt_cli/commands (imports stay lazy)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from convirt_cli.cli.commands import (
    classify,
    embed,
    evaluate,
    export,
    finetune,
    index,
    models,
    pretrain,
    retrieve,
)
from convirt_cli.torchfree.errors import ConvirtError

app = typer.Typer(
    name="convirt",
    help="Learn medical image encoders from images paired with reports (ConVIRT, RAD-DINO), export and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(config: Annotated[Path | None, typer.Option(
        "--config", help="Settings file to read instead of ./convirt.toml (e.g. a recipe in examples/).")] = None) -> None:
    """Learn medical image encoders from images paired with reports (ConVIRT, RAD-DINO), export and serve them."""
    if config is not None:
        if not config.is_file():
            raise ConvirtError(f"--config {config}: no such file")
        os.environ["CONVIRT_CONFIG"] = str(config)  # read by config.settings_file() in this process only


app.command("models", no_args_is_help=False)(models.models)
app.command("pretrain", no_args_is_help=True)(pretrain.pretrain)
app.command("export", no_args_is_help=False)(export.export)
app.command("embed", no_args_is_help=True)(embed.embed)
app.command("retrieve", no_args_is_help=True)(retrieve.retrieve)
app.command("classify", no_args_is_help=True)(classify.classify)
app.add_typer(evaluate.app, name="evaluate")
app.add_typer(index.app, name="index")
app.command("finetune", no_args_is_help=True)(finetune.finetune)


def run() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except ConvirtError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click's own usage errors
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise
