"""The PostgreSQL store (``FOREMAN_DATABASE_URL=postgresql://…``), shared by replicas.

psycopg 3 with a ``psycopg_pool`` pool, always from worker threads (never from the
trio thread), as the SQLite store does. Store functions are written once, against
the DB-API subset both databases share; :class:`Connection` makes psycopg speak it:

- ``?`` placeholders (SQLite's) become ``%s`` (psycopg's);
- rows read like :class:`sqlite3.Row` (by index, by column name, ``dict(row)``);
- a Python ``bool`` is sent as the integer 0/1 (boolean columns are ``INTEGER``);
- psycopg's errors are raised as :mod:`sqlite3`'s classes (``IntegrityError`` for a
  unique or foreign key violation, ``OperationalError`` for the rest), so every
  caller's ``except sqlite3.Error`` holds on both databases.

Migrations: the same numbered files as SQLite's, through
:func:`foreman.store.migrations.to_postgres`; the table ``schema_version`` records
the last one applied, and an advisory lock keeps two replicas starting at once from
applying one twice.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import trio
from psycopg.adapt import Dumper
from psycopg.pq import Format

from .faults import PROBE_INTERVAL, Faults
from .migrations import scripts, to_postgres

__all__ = ["CHANGES", "Connection", "PostgresStore", "Row", "connect", "open_postgres", "redact"]

LOGGER = logging.getLogger("foreman.store")

T = TypeVar("T")

#: pg_advisory_xact_lock key held while migrating ("fm-migr" in ASCII, any fixed number).
MIGRATION_LOCK = 0x666D2D6D69677200

#: The channel on which every committed change to shared state is announced, as
#: ``table:key`` (a backend's id, a user's name, a session's token hash, ...): replicas
#: listen and reload (``foreman/replicas.py``). Triggers, so that no write path can forget.
CHANGES = "foreman_changes"
_TRIGGERS = f"""
CREATE OR REPLACE FUNCTION foreman_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    k text;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_TABLE_NAME = 'backends' THEN k := r.id::text;
    ELSIF TG_TABLE_NAME = 'backend_models' THEN k := r.backend_id::text;
    ELSIF TG_TABLE_NAME = 'preferences' THEN k := r.user_name;
    ELSIF TG_TABLE_NAME = 'users' THEN k := r.name;
    ELSE k := r.token_hash;
    END IF;
    PERFORM pg_notify('{CHANGES}', TG_TABLE_NAME || ':' || k);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER foreman_users AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION foreman_changed();
CREATE OR REPLACE TRIGGER foreman_backends AFTER INSERT OR UPDATE OR DELETE ON backends
    FOR EACH ROW EXECUTE FUNCTION foreman_changed();
CREATE OR REPLACE TRIGGER foreman_selected AFTER UPDATE OF is_selected ON backend_models
    FOR EACH ROW WHEN (OLD.is_selected IS DISTINCT FROM NEW.is_selected)
    EXECUTE FUNCTION foreman_changed();
CREATE OR REPLACE TRIGGER foreman_preferences AFTER INSERT OR UPDATE OR DELETE ON preferences
    FOR EACH ROW EXECUTE FUNCTION foreman_changed();
CREATE OR REPLACE TRIGGER foreman_sessions AFTER DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION foreman_changed();
"""


class Row(tuple):  # noqa: SLOT001
    """A row readable as :class:`sqlite3.Row` is: ``row[0]``, ``row["name"]``, ``dict(row)``."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise IndexError(f"no such column: {key}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], Row]:
    names = tuple(column.name for column in cursor.description or ())

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row._names = names
        return row

    return make


class _BoolAsInt(Dumper):
    """Python booleans go to ``INTEGER`` (``BIGINT``) columns as 0/1, as SQLite stores them."""

    format = Format.TEXT
    oid = psycopg.postgres.types["int8"].oid

    def dump(self, obj: bool) -> bytes:
        return b"1" if obj else b"0"


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except psycopg.IntegrityError as exc:
        raise sqlite3.IntegrityError(str(exc).strip()) from exc
    except psycopg.Error as exc:
        raise sqlite3.OperationalError(str(exc).strip() or type(exc).__name__) from exc


def _placeholders(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class Connection:
    """A psycopg connection behind the sqlite3 surface the store functions use."""

    dialect = "postgresql"

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.raw = connection

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Row]:
        cursor = self.raw.cursor(row_factory=_row_factory)
        with _translated():
            if params is None:
                cursor.execute(sql)
            else:
                cursor.execute(_placeholders(sql), params)
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> psycopg.Cursor[Row]:
        cursor = self.raw.cursor(row_factory=_row_factory)
        with _translated():
            cursor.executemany(_placeholders(sql), rows)
        return cursor


def _configure(connection: psycopg.Connection[Any]) -> None:
    connection.adapters.register_dumper(bool, _BoolAsInt)


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A new connection to ``url`` with the store's adaptations (blocking)."""
    connection = psycopg.connect(url, **kwargs)
    _configure(connection)
    return connection


def redact(url: str) -> str:
    """``url`` without its password, for logs and ``/healthz``."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://?"
    host, port, name = info.get("host", ""), info.get("port", ""), info.get("dbname", "")
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}{':' + str(port) if port else ''}/{name}"


class PostgresStore(Faults):
    """A pool of PostgreSQL connections used from worker threads (see :class:`foreman.store.Store`).

    Args:
        pool: an open pool whose connections were set up by :func:`_configure`.
        url: the database URL (``postgresql://…``), for dedicated connections
            (LISTEN, advisory locks) that must not go back to the pool.
    """

    dialect = "postgresql"
    shared = True  # other replicas may write the same database

    def __init__(self, pool: psycopg_pool.ConnectionPool, url: str, threads: int) -> None:
        super().__init__()
        self._pool = pool
        self._limiter = trio.CapacityLimiter(threads)
        self.url = url
        self.location = self.label = redact(url)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(connection, *args, **kwargs)`` in a worker thread, in one transaction
        (READ COMMITTED). Cancellation waits for a call already running."""
        return await trio.to_thread.run_sync(
            self._transaction, lambda db: fn(db, *args, **kwargs), limiter=self._limiter
        )

    def _transaction(self, fn: Callable[[Connection], T]) -> T:
        with _translated(), self._pool.connection() as connection:  # commit, or roll back
            return fn(Connection(connection))

    async def ping(self) -> None:
        """Raise :class:`sqlite3.OperationalError` when the database cannot answer."""
        await self.call(lambda db: db.execute("SELECT 1").fetchone())

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """While :attr:`problem` is set (a call found the store faulty), ping the database
        every :data:`~.faults.PROBE_INTERVAL` seconds and clear it once it answers.
        (Reachability itself is :class:`~.health.StoreHealth`'s.) Never returns."""
        task_status.started()
        while True:
            await self.problem.wait_value(lambda problem: problem is not None)
            await trio.sleep(PROBE_INTERVAL)
            try:
                await self.ping()
            except sqlite3.Error:
                continue
            self.recovered()


def _migrate(connection: psycopg.Connection[Any]) -> int:
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        row = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = row[0] if row and row[0] is not None else 0
        applied = False
        for number, name, text in scripts("postgresql"):
            if number <= version:
                continue
            applied = True
            LOGGER.info("store: applying migration %s", name)
            connection.execute(to_postgres(text))
            connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
            version = number
        triggers = connection.execute(
            "SELECT COUNT(*) FROM pg_trigger WHERE tgname LIKE 'foreman\\_%%'"
        ).fetchone()
        if applied or not triggers or triggers[0] < _TRIGGERS.count("CREATE OR REPLACE TRIGGER"):
            connection.execute(_TRIGGERS)  # PostgreSQL only; no DDL at a plain start
    return version


def _open_pool(url: str, size: int) -> psycopg_pool.ConnectionPool:
    with _translated(), connect(url, autocommit=True) as first:
        _migrate(first)
    pool = psycopg_pool.ConnectionPool(
        url, min_size=1, max_size=size, configure=_configure, open=False, timeout=10.0
    )
    with _translated():
        pool.open(wait=True, timeout=10.0)
    return pool


@asynccontextmanager
async def open_postgres(url: str, *, threads: int = 4) -> AsyncIterator[PostgresStore]:
    """Connect to (and migrate) the PostgreSQL database at ``url``.

    ``threads`` store calls run at once, each on its own pooled connection.

    Raises:
        sqlite3.OperationalError: the database cannot be reached or migrated.
    """
    pool = await trio.to_thread.run_sync(_open_pool, url, threads)
    try:
        yield PostgresStore(pool, url, threads)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pool.close)
