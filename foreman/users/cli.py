"""``foreman users add|list|revoke``: manage API keys in foreman's store.

These commands open the store directly (``--data-dir``, ``FOREMAN_DATA_DIR``; or
``--database-url``, ``FOREMAN_DATABASE_URL``), so
they work whether foreman runs or not; a running foreman sees a change within
``foreman.users.REFRESH`` seconds. ``add`` prints the new key once, on stdout.
Exit status 1 with one line on stderr on a bad name, a taken name or an unknown user.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
import trio
from rich.table import Table

from ..settings import default_data_dir
from ..store import StoreError, StoreUnavailable, open_store
from ..terminal import data_dir_option, fail, print_table
from . import create_user, list_users, revoke_user

__all__ = ["users"]

T = TypeVar("T")


def _call(where: tuple[str | None, str | None], fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(db, *args)`` in one transaction on the store: ``where`` is
    ``(data_dir, database_url)``; the database URL wins when set."""
    data_dir, database_url = where
    location = database_url
    if not location:
        path = data_dir or default_data_dir()
        os.makedirs(path, exist_ok=True)
        location = os.path.join(path, "foreman.db")

    async def run() -> T:
        async with open_store(location) as store:
            return await store.call(fn, *args)

    try:
        return trio.run(run)
    except (ValueError, StoreError, StoreUnavailable) as exc:
        fail(str(exc))


@click.group()
@data_dir_option
@click.option(
    "--database-url",
    envvar="FOREMAN_DATABASE_URL",
    show_envvar=True,
    metavar="URL",
    help="foreman's PostgreSQL database (postgresql://…), when it runs on one.",
)
@click.pass_context
def users(ctx: click.Context, data_dir: str | None, database_url: str | None) -> None:
    """Users and their API keys: add, list, revoke.

    With no FOREMAN_TOKEN and no user foreman is open to anyone who can reach
    it; once a user has been made, every request needs a key (or FOREMAN_TOKEN),
    even after every user is revoked.
    """
    ctx.obj = (data_dir, database_url)


@users.command()
@click.argument("name")
@click.option("--admin", is_flag=True, help="The user may manage users (/admin/api/).")
@click.pass_obj
def add(where: tuple[str | None, str | None], name: str, admin: bool) -> None:
    """Add a user and print its new API key (shown this once only)."""
    user, key = _call(where, create_user, name, "admin" if admin else "user")
    click.echo(f"created {user['role']} {user['name']}; its key (shown once):", err=True)
    click.echo(key)


@users.command("list")
@click.pass_obj
def list_(where: tuple[str | None, str | None]) -> None:
    """Every user: name, role, the start of its key, created, revoked."""
    rows = _call(where, list_users)
    if not rows:
        click.echo("no users")
        return
    table = Table("name", "role", "key", "created", "revoked")
    for row in rows:
        table.add_row(
            row["name"], row["role"], row["key_prefix"], row["created_at"], row["revoked_at"] or ""
        )
    print_table(table)


@users.command()
@click.argument("name")
@click.pass_obj
def revoke(where: tuple[str | None, str | None], name: str) -> None:
    """Revoke a user's key (a running foreman refuses it within seconds)."""
    user = _call(where, revoke_user, name)
    if user is None:
        fail(f"user {name!r} not found")
    click.echo(f"revoked {name}")
