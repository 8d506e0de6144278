"""The `convirt` command: one sub-command per module in convirt_cli/commands (imports stay lazy)."""

from __future__ import annotations

import sys

import typer

from convirt_cli.commands import finetune, models, pretrain
from convirt_cli.commands import classify, embed, evaluate, export, index, retrieve
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
