"""The SQLite store: one database (WAL) in ``FOREMAN_DATA_DIR``, ``foreman.db``.

Every call runs in one dedicated thread (:meth:`SQLiteStore.call`): SQLite is never
touched from the trio thread, and there is exactly one writer. ``PRAGMA user_version``
records the last migration applied. Faults degrade, never stop (:mod:`.faults`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from .faults import (
    CHECK_INTERVAL,
    MIN_FREE,
    PROBE_INTERVAL,
    Faults,
    StoreError,
    StoreUnavailable,
    is_fault,
)
from .migrations import scripts
from .private import private_database

__all__ = ["SQLiteStore", "open_sqlite"]

LOGGER = logging.getLogger("foreman.store")

T = TypeVar("T")


class SQLiteStore(Faults):
    """A SQLite connection owned by one worker thread (see :class:`foreman.store.Store`).

    Use :meth:`call` for every access: ``await store.call(fn, *args)`` runs
    ``fn(connection, *args)`` in the store's thread and returns its result; a
    function that writes commits (or rolls back on error) as one transaction.

    :attr:`problem` is None while the store works, else what is wrong with it
    (``"foreman.db: database or disk is full"``).
    """

    dialect = "sqlite"
    shared = False  # one process owns the file: no other replica to hear from

    def __init__(self, connection: sqlite3.Connection, path: str = ":memory:") -> None:
        super().__init__()
        self._connection = connection
        self._limiter = trio.CapacityLimiter(1)  # one thread at a time: the one writer
        self.path = self.location = path
        self.label = os.path.basename(path)
        self._identity = _identity(path)
        self._gone = False

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(connection, *args, **kwargs)`` in the store's thread, in one transaction.

        Cancellation does not interrupt a call already running (SQLite is not
        interruptible midway); the caller returns once it is done.

        Reads go on while the store is faulty; writes are refused (rolled back) until
        :meth:`watch` has seen it work again.

        Raises:
            StoreUnavailable: the store failed (see :func:`is_fault`), is faulty and
                the call would write, or its file is gone: nothing the call wrote is kept.
        """
        if self._gone:  # what would be written now would be lost at the next start
            raise StoreUnavailable(self.problem.value)
        faulty = self.problem.value is not None
        try:
            return await trio.to_thread.run_sync(
                self._transaction,
                lambda db: fn(db, *args, **kwargs),
                faulty,
                limiter=self._limiter,
            )
        except sqlite3.DatabaseError as exc:
            if not is_fault(exc):
                raise
            self.failed(str(exc))
            raise StoreUnavailable(self.problem.value) from exc

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check the database file is still there every :data:`CHECK_INTERVAL` seconds;
        while the store is faulty, probe it (free space, a write) every
        :data:`PROBE_INTERVAL` seconds and clear the fault once it works. Never returns."""
        task_status.started()
        while True:
            if self.problem.value is None:
                with trio.move_on_after(CHECK_INTERVAL):
                    await self.problem.wait_value(lambda p: p is not None)
                if self.problem.value is None and self._vanished():
                    self._gone = True
                    self.failed(_GONE)
                continue
            await trio.sleep(PROBE_INTERVAL)
            try:
                await trio.to_thread.run_sync(self._probe, limiter=self._limiter)
            except (OSError, sqlite3.Error) as exc:
                self.failed(str(exc))  # already faulty: a new reason, not a new log line
            else:
                self._gone = False
                self.recovered()

    def _probe(self) -> None:
        if self._vanished():
            raise OSError(_GONE)
        if self.path != ":memory:":
            stat = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
            if stat.f_bavail * stat.f_frsize < MIN_FREE:
                raise OSError("database or disk is full")
        version = self._connection.execute("PRAGMA user_version").fetchone()[0]
        self._connection.execute(f"PRAGMA user_version = {int(version)}")  # a write

    def _vanished(self) -> bool:
        return self._identity is not None and _identity(self.path) != self._identity

    async def ping(self) -> None:
        """Raise :class:`sqlite3.Error` when the database cannot answer."""
        await self.call(lambda db: db.execute("SELECT 1").fetchone())

    def _transaction(self, fn: Callable[[sqlite3.Connection], T], faulty: bool = False) -> T:
        with self._connection:  # commit, or roll back on an exception
            result = fn(self._connection)
            if faulty and self._connection.in_transaction:
                # a write while the store is faulty: it may land (SQLite reuses its WAL
                # file's space) but must not, or what is accepted would depend on luck
                raise StoreUnavailable(self.problem.value)
            return result


_GONE = "the database file was deleted or replaced while foreman runs (restart foreman)"


def _identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) of the file at ``path``; None for ``:memory:`` or a missing file."""
    if path == ":memory:":
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return (0, 0)
    return stat.st_dev, stat.st_ino


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


def _open(path: str) -> sqlite3.Connection:
    """:func:`_connect` after ``PRAGMA quick_check``; every failure a :class:`StoreError`."""
    corrupt = (
        f"the store {path} is corrupt ({{}}): stop foreman, then restore the file from a"
        " backup, or move it (with its -wal and -shm files) aside to start with an empty"
        " store (users, backends and jobs are in it)"
    )
    try:
        check = sqlite3.connect(path)
        try:
            rows = [row[0] for row in check.execute("PRAGMA quick_check(1)")]
        finally:
            check.close()
        if rows != ["ok"]:
            found = " ".join(" ".join(str(row).split()) for row in rows)  # one line
            raise StoreError(corrupt.format(found[:300]))
        return _connect(path)
    except sqlite3.DatabaseError as exc:
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "not a database" in str(exc):
            raise StoreError(corrupt.format(exc)) from None
        raise StoreError(f"cannot open the store {path}: {exc}") from None


@asynccontextmanager
async def open_sqlite(path: str) -> AsyncIterator[SQLiteStore]:
    """Open (checking, creating and migrating as needed) the database file at ``path``.

    Raises:
        StoreError: the file cannot be opened or migrated, or is corrupt (one line,
            with what to do).
    """
    connection = await trio.to_thread.run_sync(_open, path)
    try:
        yield SQLiteStore(connection, path)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(connection.close)
