"""What every `conveyor` command group shares: the store option and the one-line error handling."""

from __future__ import annotations

import sys
from typing import Any

import click

from conveyor.errors import ConveyorError

STORE_OPTION = click.option(
    "--store",
    envvar="CONVEYOR_STORE",
    default="./models",
    show_default=True,
    help="Model store URI: a directory, file://, memory://, gs:// or s3:// (env CONVEYOR_STORE).",
)


class Group(click.Group):
    """Turns every ConveyorError, and click's own usage errors, into one readable line and a non-zero exit."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # fmt: skip
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:  # click prints usage, a hint and the error on three lines
            where = exc.ctx.command_path if exc.ctx is not None else prog_name or self.name
            click.secho(f"error: {exc.format_message()} (see: {where} --help)", fg="red", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.secho(f"error: {exc.format_message()}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
