"""``foreman store copy --to postgresql://…``: move a SQLite store onto PostgreSQL.

Copies every row foreman keeps — users, backends and their models, preferences, jobs,
their artifacts (files are read into the rows, as replicas keep them) and webhook
deliveries — from ``foreman.db`` in the data directory into a PostgreSQL database,
migrated first, in one transaction. The target must hold no users, backends or jobs
yet. Ids are kept. Backends' API keys are sealed again with ``FOREMAN_SECRET_KEY`` (which
every replica needs): opened with it, or else with the data directory's generated
``secret.key``. Waiting places and sign-in sessions are not copied.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import click
import trio

from ..settings import default_data_dir
from ..terminal import data_dir_option, fail
from . import is_database_url

__all__ = ["TABLES", "copy_store", "store"]

#: Tables copied, parents first, with their identity column (reset afterwards) or None.
TABLES = (
    ("users", "id"),
    ("backends", "id"),
    ("backend_models", None),
    ("preferences", None),
    ("jobs", "seq"),
    ("artifacts", None),
    ("deliveries", "seq"),
)


def copy_store(source: str, url: str, data_dir: str, secret_key: str) -> dict[str, int]:
    """Copy the SQLite database at ``source`` into the PostgreSQL ``url`` (blocking);
    returns the rows copied by table. API keys end sealed with ``secret_key``.

    Raises:
        ValueError: the target already holds foreman's data.
        sqlite3.Error: either database cannot be read or written.
    """
    from ..backends.registry import Sealer
    from .postgres import Connection, _migrate, connect

    new, old = Sealer(secret_key, data_dir), Sealer(None, data_dir)
    has_key_file = os.path.exists(os.path.join(data_dir, "secret.key"))

    def reseal(sealed: bytes | None) -> bytes | None:
        if sealed is None or new.open(sealed) is not None or not has_key_file:
            return sealed  # none, already sealed with the new key, or unreadable as before
        opened = old.open(sealed)
        return sealed if opened is None else new.seal(opened)

    copied: dict[str, int] = {}
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as reader, connect(url) as target:
        reader.row_factory = sqlite3.Row
        target.autocommit = True
        _migrate(target)
        target.autocommit = False
        db = Connection(target)
        for table in ("users", "backends", "jobs"):
            if db.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                raise ValueError(f"the target already has {table}: copy into an empty database")
        for table, identity in TABLES:
            columns = [row[1] for row in reader.execute(f"PRAGMA table_info({table})")]
            found = reader.execute(f"SELECT * FROM {table}")
            rows = [_row(table, dict(row), data_dir) for row in found]
            for row in rows if table == "backends" else ():
                row["api_key"] = reseal(row["api_key"])
            if table == "artifacts":
                columns = [*dict.fromkeys([*columns, "content"])]
            if rows:
                marks = ", ".join("?" for _ in columns)
                db.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                    [tuple(row.get(c) for c in columns) for row in rows],
                )
            if identity:
                db.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{identity}'),"
                    f" COALESCE(MAX({identity}), 0) + 1, false) FROM {table}"
                )
            copied[table] = len(rows)
        target.commit()
    return copied


def _row(table: str, row: dict[str, Any], data_dir: str) -> dict[str, Any]:
    """A row as the target keeps it: an artifact's file read into ``content``."""
    if table == "artifacts" and row.get("path"):
        with open(os.path.join(data_dir, row["path"]), "rb") as file:
            row["content"] = file.read()
        row["path"] = ""
    return row


@click.group()
def store() -> None:
    """foreman's store: copy a SQLite store onto PostgreSQL."""


@store.command()
@data_dir_option
@click.option("--to", "url", required=True, metavar="URL", help="postgresql://… to copy into.")
@click.option(
    "--secret-key",
    envvar="FOREMAN_SECRET_KEY",
    show_envvar=True,
    required=True,
    metavar="TOKEN",
    help="The key every replica will have: backends' API keys are sealed again with it.",
)
def copy(data_dir: str | None, url: str, secret_key: str) -> None:
    """Copy every user, backend, preference, job, artifact and delivery into PostgreSQL."""
    directory = data_dir or default_data_dir()
    source = os.path.join(directory, "foreman.db")
    if not os.path.exists(source):
        fail(f"no store at {source}")
    if not is_database_url(url):
        fail("--to: expected a postgresql:// URL")
    import psycopg

    try:
        copied = trio.run(trio.to_thread.run_sync, copy_store, source, url, directory, secret_key)
    except (ValueError, sqlite3.Error, OSError, psycopg.Error) as exc:
        fail(str(exc))
    click.echo(", ".join(f"{count} {table}" for table, count in copied.items()) + " copied")
