"""Whether the store answers: ``/readyz`` is 503 while it does not (a shared database).

With SQLite the file is this process's own and is not watched. With PostgreSQL a ping
(``SELECT 1``) runs every :data:`PERIOD` seconds; the database counts as unreachable
after a failed ping or when no ping has succeeded for :data:`STALE` seconds (a ping
stuck on a lost network answers nothing).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import trio

__all__ = ["PERIOD", "STALE", "StoreHealth"]

LOGGER = logging.getLogger("foreman.store")

PERIOD = 1.0
STALE = 3.0


class StoreHealth:
    """The store's reachability, for ``/healthz``, ``/readyz`` and ``/metrics``.

    Args:
        store: the open store.
        replica: this replica's id (:data:`foreman.store.REPLICA`).
    """

    def __init__(self, store: Any, replica: str) -> None:
        self.store, self.replica = store, replica
        self.reachable = True
        self.error: str | None = None
        self._last_ok = 0.0
        self._pinging = False

    def report(self) -> dict[str, Any]:
        """``{"kind": "sqlite" | "postgresql", "location": path or URL without password,
        "reachable": bool, "error": str | None}``."""
        return {
            "kind": self.store.dialect,
            "location": self.store.location,
            "reachable": self.reachable,
            "error": self.error,
        }

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ping a shared database forever (returns at once with SQLite)."""
        task_status.started()
        if not self.store.shared:
            return
        self._last_ok = trio.current_time()
        async with trio.open_nursery() as nursery:
            while True:
                if not self._pinging:
                    self._pinging = True
                    nursery.start_soon(self._ping)
                await trio.sleep(PERIOD)
                if self.reachable and trio.current_time() - self._last_ok > STALE:
                    self._down(f"no answer for {STALE:.0f} s")

    async def _ping(self) -> None:
        try:
            await self.store.ping()
        except sqlite3.Error as exc:
            self._down(str(exc) or type(exc).__name__)
        else:
            if not self.reachable:
                LOGGER.info("store: the database answers again")
            self.reachable, self.error = True, None
            self._last_ok = trio.current_time()
        finally:
            self._pinging = False

    def _down(self, error: str) -> None:
        if self.reachable:
            LOGGER.warning("store: the database is unreachable: %s", error)
        self.reachable, self.error = False, error
