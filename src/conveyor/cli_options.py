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
    """Turns every ConveyorError into one readable line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
