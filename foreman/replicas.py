"""What a replica hears from the others on a shared database (``FOREMAN_DATABASE_URL``).

Every committed change to users, backends (and which model is selected), preferences and
sign-in sessions is announced by the database itself (triggers, channel
:data:`~foreman.store.postgres.CHANGES`, payload ``table:key``); each replica listens
and reloads what changed, so a user added, a key revoked, a backend changed or a
preference saved on one replica holds on every replica within milliseconds. After a
lost listening session everything is reloaded (announcements may have been missed).
With SQLite (one process) there is nothing to hear and :func:`follow_replicas` returns.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import trio

from .backends import choices
from .gateway import Gateway

__all__ = ["follow_replicas"]

LOGGER = logging.getLogger("foreman.replicas")

RETRY = 1.0  # seconds before listening again after the database went away


async def follow_replicas(
    gw: Gateway, store: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen for the other replicas' changes and apply them here; never returns (shared)."""
    if not store.shared:
        task_status.started()
        return
    from .store.postgres import CHANGES, connect

    def listen() -> Any:
        listener = connect(store.url, autocommit=True)
        listener.execute(f"LISTEN {CHANGES}")
        return listener

    def heard(listener: Any) -> list[str]:
        return [n.payload for n in listener.notifies(timeout=RETRY, stop_after=1)]

    missed = False
    while True:
        try:
            listener = await trio.to_thread.run_sync(listen)
        except Exception as exc:  # psycopg's errors: the database is away; try again
            LOGGER.warning("replicas: cannot listen for changes (%s)", exc)
            await trio.sleep(RETRY)
            missed = True
            continue
        task_status.started()
        task_status = trio.TASK_STATUS_IGNORED
        try:
            if missed:
                await _apply(gw, ["users:", "preferences:", *_all_backends(gw)])
                missed = False
            while True:
                payloads = await trio.to_thread.run_sync(heard, listener)
                await _apply(gw, payloads)
        except Exception as exc:
            LOGGER.warning("replicas: listening session lost (%s)", exc)
            missed = True
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(listener.close)


def _all_backends(gw: Gateway) -> list[str]:
    return [f"backends:{i}" for i in (gw.backends.records if gw.backends else ())]


async def _apply(gw: Gateway, payloads: list[str]) -> None:
    """Reload what each ``table:key`` names; a store that fails is logged, never raised."""
    for payload in dict.fromkeys(payloads):  # once each, in order
        table, _, key = payload.partition(":")
        try:
            if table == "users" and gw.users is not None:
                await gw.users.reload()
            elif table == "sessions" and gw.users is not None:
                gw.users.sessions.drop(key)
            elif table in ("backends", "backend_models") and gw.backends and key.isdigit():
                await gw.backends.changed(int(key))
            elif table == "preferences" and gw.backends is not None:
                gw.backends.preferences = await gw.backends.store.call(choices.all_preferences)
        except sqlite3.Error as exc:
            LOGGER.warning("replicas: cannot reload %s (%s)", payload, exc)
