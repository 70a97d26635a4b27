"""``foreman secrets``: the secret that seals backends' API keys at rest."""

from __future__ import annotations

import os

import click
import trio

from ..settings import default_data_dir
from ..store import StoreError, StoreUnavailable, open_store
from ..terminal import data_dir_option, fail
from .sealing import Sealer, SecretKeyError, finish_rotation, rotate

__all__ = ["secrets"]


@click.group()
@data_dir_option
@click.pass_context
def secrets(ctx: click.Context, data_dir: str | None) -> None:
    """The secret sealing backends' API keys (DATA_DIR/secret.key or FOREMAN_SECRET_KEY)."""
    ctx.obj = data_dir or default_data_dir()


@secrets.command("rotate")
@click.option(
    "--secret-key",
    envvar="FOREMAN_SECRET_KEY",
    show_envvar=True,
    metavar="SECRET",
    help="The secret the keys are sealed with now, if it is not the key file.",
)
@click.option(
    "--new-secret-key",
    metavar="SECRET",
    help="Re-seal under this secret (then set FOREMAN_SECRET_KEY to it); unset: a new"
    " key in DATA_DIR/secret.key.",
)
@click.pass_obj
def rotate_command(data_dir: str, secret_key: str | None, new_secret_key: str | None) -> None:
    """Re-seal every stored API key under a new secret.

    Stop foreman first (or restart it right after): a running foreman keeps the old
    key in memory. Safe to interrupt: until it is done both keys open every stored key.
    """
    if secret_key and not new_secret_key:
        fail("the keys are sealed with FOREMAN_SECRET_KEY: give --new-secret-key")
    sealer = Sealer(secret_key, data_dir)

    async def run() -> int:
        async with open_store(os.path.join(data_dir, "foreman.db")) as store:
            return await store.call(rotate, sealer, new_secret_key)

    try:
        count = trio.run(run)
        if not new_secret_key:
            finish_rotation(sealer)
    except (SecretKeyError, StoreError, StoreUnavailable, OSError) as exc:
        fail(str(exc))
    where = "the new FOREMAN_SECRET_KEY" if new_secret_key else f"a new key in {sealer.key_path}"
    click.echo(f"re-sealed {count} API key(s) under {where}")
