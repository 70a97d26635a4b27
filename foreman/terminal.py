"""What the client commands (``foreman jobs``, ``foreman users``) share: failing in one
line and printing tables."""

from __future__ import annotations

import sys
from typing import NoReturn

import click
from rich.console import Console
from rich.table import Table

__all__ = ["data_dir_option", "fail", "print_table"]

#: ``--data-dir`` (``FOREMAN_DATA_DIR``) for the commands that open the store themselves.
data_dir_option = click.option(
    "--data-dir",
    envvar="FOREMAN_DATA_DIR",
    show_envvar=True,
    metavar="DIR",
    help="foreman's data directory (default: the platform's user data directory).",
)


def fail(message: str) -> NoReturn:
    """``foreman: MESSAGE`` on stderr, exit status 1."""
    click.echo(f"foreman: {message}", err=True)
    sys.exit(1)


def print_table(table: Table) -> None:
    """Print ``table`` on stdout: as wide as the terminal, or whole lines into a pipe."""
    Console(width=None if sys.stdout.isatty() else 200).print(table)
