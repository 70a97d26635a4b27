"""The SQLite store: one database (WAL) in ``FOREMAN_DATA_DIR``, ``foreman.db``.

Every call runs in one dedicated thread (:meth:`SQLiteStore.call`): SQLite is never
touched from the trio thread, and there is exactly one writer. ``PRAGMA user_version``
records the last migration applied.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from .migrations import scripts

__all__ = ["SQLiteStore", "open_sqlite"]

LOGGER = logging.getLogger("foreman.store")

T = TypeVar("T")


class SQLiteStore:
    """A SQLite connection owned by one worker thread (see :class:`foreman.store.Store`)."""

    dialect = "sqlite"
    shared = False  # one process owns the file: no other replica to hear from

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self._connection = connection
        self._limiter = trio.CapacityLimiter(1)  # one thread at a time: the one writer
        self.location = path

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

    async def ping(self) -> None:
        """Raise :class:`sqlite3.Error` when the database cannot answer."""
        await self.call(lambda db: db.execute("SELECT 1").fetchone())


def _migrate(connection: sqlite3.Connection) -> int:
    """Apply the migrations not applied yet; returns the schema version."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    for number, name, text in scripts():
        if number <= version:
            continue
        LOGGER.info("store: applying migration %s", name)
        connection.executescript(f"BEGIN;\n{text}\nPRAGMA user_version = {number};\nCOMMIT;")
        version = number
    return version


def _connect(path: str) -> sqlite3.Connection:
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
async def open_sqlite(path: str) -> AsyncIterator[SQLiteStore]:
    """Open (creating and migrating as needed) the database file at ``path``.

    Raises:
        sqlite3.Error: the file cannot be opened or migrated.
    """
    connection = await trio.to_thread.run_sync(_connect, path)
    try:
        yield SQLiteStore(connection, path)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(connection.close)
