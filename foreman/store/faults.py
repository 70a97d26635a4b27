"""Store faults: what stops a store call, and how a store notices it works again.

A fault of the store (a full disk, a read-only, locked, vanished or corrupt database,
an I/O error, a database that cannot be reached) never stops foreman: the call raises
:class:`StoreUnavailable` (the control plane answers 503), :attr:`Faults.problem` says
what is wrong (``/healthz`` "degraded", ``/readyz`` 503) and the store's ``watch()``
probes it every second until it can be written again. At open, a database that cannot
be used is :class:`StoreError`, one line saying what to do.
"""

from __future__ import annotations

import logging
import sqlite3

from trio_util import AsyncValue

__all__ = ["FAULTS", "Faults", "StoreError", "StoreUnavailable", "is_fault"]

LOGGER = logging.getLogger("foreman.store")

#: SQLite's primary result codes that mean the store, not the call, is at fault.
FAULTS = frozenset(
    {
        "SQLITE_FULL",
        "SQLITE_READONLY",
        "SQLITE_IOERR",
        "SQLITE_CORRUPT",
        "SQLITE_NOTADB",
        "SQLITE_CANTOPEN",
        "SQLITE_BUSY",
        "SQLITE_LOCKED",
        "SQLITE_PERM",
        "SQLITE_NOLFS",
    }
)
#: Free bytes the data directory's file system needs before a full store is tried again.
MIN_FREE = 256 * 1024
#: Seconds between probes of a faulty store, and between checks that the file is still there.
PROBE_INTERVAL = 1.0
CHECK_INTERVAL = 5.0


class StoreError(Exception):
    """The store cannot be opened: the message is one line saying why and what to do."""


class StoreUnavailable(Exception):
    """The store cannot do this now (disk full, read-only, locked, gone, I/O error).

    Transient: foreman keeps running and :meth:`Store.watch` notices when it works again.
    """


def is_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is the store's fault (full, read-only, corrupt...) rather than the call's."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    name = getattr(exc, "sqlite_errorname", "") or ""
    primary = "_".join(name.split("_")[:2])  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
    if primary in FAULTS:
        return True
    # errors raised before SQLite gave a code (an unreadable file, say)
    return type(exc) in (sqlite3.DatabaseError, sqlite3.OperationalError) and not name


class Faults:
    """What a store knows of its own health: :attr:`problem` is None while it works,
    else what is wrong with it (``"store foreman.db: database or disk is full"``)."""

    #: a short name of the database for messages (a file name, or the URL's database)
    label = "store"

    def __init__(self) -> None:
        self.problem: AsyncValue[str | None] = AsyncValue(None)

    def failed(self, reason: str) -> None:
        """Mark the store faulty (its ``watch()`` then probes it until it works)."""
        problem = f"store {self.label}: {reason}"
        if self.problem.value is None:
            LOGGER.error("%s; writes answer 503 until it works again", problem)
        self.problem.value = problem

    async def wait_working(self) -> None:
        """Return once the store works (at once if it does)."""
        await self.problem.wait_value(None)

    def recovered(self) -> None:
        LOGGER.warning("%s works again", self.label)
        self.problem.value = None
