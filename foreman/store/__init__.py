"""The store: one SQLite database (WAL) in ``FOREMAN_DATA_DIR``, ``foreman.db``.

Every call runs in one dedicated thread (:meth:`Store.call`): SQLite is never touched
from the trio thread, and there is exactly one writer. Schema migrations are the
numbered ``migrations/NNNN_*.sql`` files, applied in order at open; ``PRAGMA
user_version`` records the last one applied.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, TypeVar

import trio

from .private import private_database

__all__ = ["Store", "open_store"]

LOGGER = logging.getLogger("foreman.store")

T = TypeVar("T")


class Store:
    """A SQLite connection owned by one worker thread.

    Use :meth:`call` for every access: ``await store.call(fn, *args)`` runs
    ``fn(connection, *args)`` in the store's thread and returns its result; a
    function that writes commits (or rolls back on error) as one transaction.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._limiter = trio.CapacityLimiter(1)  # one thread at a time: the one writer

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(connection, *args, **kwargs)`` in the store's thread, in one transaction.

        Cancellation does not interrupt a call already running (SQLite is not
        interruptible midway); the caller returns once it is done.
        """
        return await trio.to_thread.run_sync(
            self._transaction, lambda db: fn(db, *args, **kwargs), limiter=self._limiter
        )

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._connection:  # commit, or roll back on an exception
            return fn(self._connection)


def _migrate(connection: sqlite3.Connection) -> int:
    """Apply the migrations not applied yet; returns the schema version."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    scripts = sorted(
        (entry.name, entry)
        for entry in resources.files(__package__).joinpath("migrations").iterdir()
        if entry.name.endswith(".sql")
    )
    for name, entry in scripts:
        number = int(name.split("_", 1)[0])
        if number <= version:
            continue
        LOGGER.info("store: applying migration %s", name)
        connection.executescript(
            f"BEGIN;\n{entry.read_text()}\nPRAGMA user_version = {number};\nCOMMIT;"
        )
        version = number
    return version


def _connect(path: str) -> sqlite3.Connection:
    private_database(path)  # 0600 in a 0700 directory, whatever the umask
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")  # durable across crashes of foreman
    connection.execute("PRAGMA busy_timeout = 5000")
    _migrate(connection)  # foreign keys off meanwhile: a rebuilt table cascades nothing
    connection.execute("PRAGMA foreign_keys = ON")
    connection.isolation_level = "DEFERRED"  # from here on, `with connection` is a transaction
    connection.row_factory = sqlite3.Row
    return connection


@asynccontextmanager
async def open_store(path: str) -> AsyncIterator[Store]:
    """Open (creating and migrating as needed) the database at ``path``.

    Raises:
        sqlite3.Error: the file cannot be opened or migrated.
    """
    connection = await trio.to_thread.run_sync(_connect, path)
    try:
        yield Store(connection)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(connection.close)
