"""The `convirt` command: one sub-command per module in convirt_cli/commands (imports stay lazy)."""

from __future__ import annotations

import sys

import typer

from convirt_cli.commands import models, pretrain
from convirt_cli.errors import ConvirtError

app = typer.Typer(
    name="convirt",
    help="Learn medical image encoders from images paired with reports (ConVIRT, RAD-DINO), export and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("models", no_args_is_help=False)(models.models)
app.command("pretrain", no_args_is_help=True)(pretrain.pretrain)


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
