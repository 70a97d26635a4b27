"""The store: foreman's state, in SQLite (the default) or PostgreSQL (several replicas).

Unset ``FOREMAN_DATABASE_URL``: one SQLite database (WAL) in ``FOREMAN_DATA_DIR``,
``foreman.db`` (:mod:`.sqlite`). ``postgresql://…``: that database, shared by every
replica (:mod:`.postgres`). Both run each call in a worker thread, never in the trio
thread, and apply the same numbered migrations (:mod:`.migrations`) at open.

Store functions take the connection first and use the DB-API subset both share
(``?`` placeholders, rows by index or column name, ``sqlite3`` error classes); see
:mod:`.postgres` for what is translated.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from trio_util import AsyncValue

from .faults import StoreError, StoreUnavailable, is_fault

__all__ = [
    "REPLICA",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "is_database_url",
    "is_fault",
    "open_store",
]

T = TypeVar("T")

#: This process's name among the replicas: ``FOREMAN_REPLICA_ID``, else ``host-pid``.
REPLICA = os.environ.get("FOREMAN_REPLICA_ID") or f"{socket.gethostname()}-{os.getpid()}"


class Store(Protocol):
    """What every store offers.

    ``await store.call(fn, *args)`` runs ``fn(connection, *args)`` in a worker thread
    and returns its result; a function that writes commits (or rolls back on error)
    as one transaction. ``dialect`` is ``"sqlite"`` or ``"postgresql"``; ``shared`` is
    whether other replicas may use the same database; ``location`` names it for
    people (a path, or the URL without its password).
    """

    dialect: str
    shared: bool
    location: str
    problem: AsyncValue[str | None]  # None while it works (see .faults)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def ping(self) -> None: ...

    def failed(self, reason: str) -> None: ...

    async def wait_working(self) -> None: ...

    async def watch(self, *, task_status: Any = ...) -> None: ...


def is_database_url(location: str) -> bool:
    """Whether ``location`` is a PostgreSQL URL rather than a SQLite file path."""
    return location.startswith(("postgresql://", "postgres://"))


@asynccontextmanager
async def open_store(location: str) -> AsyncIterator[Any]:
    """Open (creating and migrating as needed) the store at ``location``: a SQLite file
    path, or a ``postgresql://`` URL.

    Raises:
        StoreError: a SQLite file cannot be opened or migrated, or is corrupt (one line).
        sqlite3.Error: the PostgreSQL database cannot be reached or migrated (its store
            raises :mod:`sqlite3`'s classes).
    """
    if is_database_url(location):
        from .postgres import open_postgres  # psycopg only loads when it is used

        async with open_postgres(location) as store:
            yield store
    else:
        from .sqlite import open_sqlite

        async with open_sqlite(location) as store:
            yield store
