"""The replica that holds a cluster gate's slot (ADR 21): its watchdog, and its ticket.

The slot is a session-level advisory lock on the holder's own connection; PostgreSQL frees
it when that session ends, even while the holder, cut off from the database, still streams
its chat. So while it holds the slot, the holder asks every second, through *another*
connection, whether the holding session still exists; when the answer is "gone", or no
answer comes in time, it has lost the slot and ends its chat (it fails closed).

The holder's ticket stays, marked held, until it lets the slot go: one that a holder who
lost the slot leaves behind tells the next holder to wait (:func:`wait_out`) until that
chat has ended, since PostgreSQL may free the lock of a killed session at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool
import trio

__all__ = [
    "LIVE",
    "LOST_AFTER",
    "Holding",
    "drop",
    "mark_held",
    "release",
    "session_alive",
    "still_running",
    "wait_out",
    "watch",
]

LOGGER = logging.getLogger("foreman.gate")

#: Seconds without word that the session holding a slot still exists (asked every
#: ``RECHECK``, 1 s) after which its holder gives the slot up and ends its chat. RECHECK +
#: LOST_AFTER = 5 s must stay well under the ~10 s in which PostgreSQL frees the lock of a
#: session cut off by the network (``KEEPALIVES``): the chat has ended before another
#: replica can take the slot. The price: a database slower than this to answer ends chats.
LOST_AFTER = 4.0


def _live(pid: str) -> str:
    """SQL: ticket ``t``'s session (its pid in the SQL expression ``pid``) still exists."""
    return (
        f"EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = {pid}"
        " AND extract(epoch FROM a.backend_start)::float8 = t.since)"
    )


#: SQL: ticket ``t`` belongs to a session that still exists.
LIVE = _live("t.pid")
#: SQL: held ticket ``t``'s replica lives. A holder's ticket stays, its pid negated (so the
#: line no longer counts it), until the holder lets the slot go: one left by a holder whose
#: session was lost tells the next holder to wait until that chat has ended.
_HELD_LIVE = _live("-t.pid")


class Holding:
    """One hold of a cluster gate's slot.

    Attributes:
        seq: the holder's ticket, kept (its pid negated) until the slot is let go.
        connection: the psycopg connection whose session holds the advisory lock.
        session: that session's ``(pg_backend_pid(), backend_start)``.
        fences: tickets (``seq``) of earlier holders that lost the slot and whose replicas
            may still run their chats (:func:`wait_out` waits for them).
        body: the scope the holder's chat runs in; cancelled when the slot is lost.
        watching: the watchdog's scope; cancelled when the hold ends.
        lost: why the slot was lost (empty while it is held).
    """

    def __init__(
        self, seq: int, connection: psycopg.Connection[Any], session: Any, fences: list[int]
    ) -> None:
        self.seq, self.connection, self.session, self.fences = seq, connection, session, fences
        self.body, self.watching = trio.CancelScope(), trio.CancelScope()
        self.lost = ""

    def lose(self, why: str) -> None:
        """The slot is lost: end the chat that runs in :attr:`body`."""
        self.lost = why
        self.body.cancel()


async def watch(
    holding: Holding, name: str, alive: Callable[[], bool], every: float, lost_after: float
) -> None:
    """Ask ``alive()`` every ``every`` seconds until :attr:`Holding.watching` is cancelled;
    :meth:`Holding.lose` when it answers False, or when no True came for ``lost_after``
    seconds (errors and hung questions count as no answer).

    ``alive`` blocks (a query on a pooled connection): it runs in a worker thread that is
    abandoned once the deadline passes, so a hung query never holds the watchdog back. One
    question at a time per hold; an abandoned one ends with its connection's TCP timeouts
    (``KEEPALIVES``). Never raises but :class:`trio.Cancelled`: a bug loses the slot.
    """
    with holding.watching:
        alive_at = trio.current_time()
        why = ""
        while not why:
            deadline = alive_at + lost_after
            await trio.sleep_until(min(trio.current_time() + every, deadline))
            answer = None
            with trio.move_on_at(deadline):
                try:
                    answer = await trio.to_thread.run_sync(alive, abandon_on_cancel=True)
                except psycopg.Error as exc:
                    LOGGER.info("gate %s: cannot check the holding session (%s)", name, exc)
                except Exception:
                    LOGGER.exception("gate %s: the watchdog failed", name)
                    answer = False
            if answer:
                alive_at = trio.current_time()
            elif answer is False:
                why = "the session holding the slot is gone"
            elif trio.current_time() >= deadline:
                why = f"no word of the session holding the slot for {lost_after:g} s"
        LOGGER.warning("gate %s: %s; ending the chat that holds it", name, why)
        holding.lose(why)


async def wait_out(running: Callable[[], bool], every: float, at_most: float) -> None:
    """Return once ``running()`` (blocking, in a worker thread) answers False, asking every
    ``every`` seconds, or after ``at_most`` seconds whatever it answers: by then the
    earlier holder's own watchdog has ended its chat. Errors count as "still running"."""
    with trio.move_on_after(at_most):
        while True:
            try:
                if not await trio.to_thread.run_sync(running, abandon_on_cancel=True):
                    return
            except psycopg.Error:
                pass
            await trio.sleep(every)


async def drop(pool: psycopg_pool.ConnectionPool, tickets: list[int]) -> None:
    """Delete these held tickets, in a worker thread abandoned if cancelled (best effort)."""

    def delete() -> None:
        with pool.connection(timeout=LOST_AFTER) as connection:
            connection.execute("DELETE FROM gate_tickets WHERE seq = ANY(%s)", (tickets,))

    try:
        await trio.to_thread.run_sync(delete, abandon_on_cancel=True)
    except psycopg.Error as exc:
        LOGGER.info("gate: could not drop the held tickets %s (%s)", tickets, exc)


# --- in worker threads --------------------------------------------------------------------


def mark_held(connection: psycopg.Connection[Any], name: str, seq: int) -> tuple[Any, list[int]]:
    """With the lock of gate ``name`` just taken on ``connection`` for ticket ``seq``: mark
    the ticket held. Returns the holding session (pid, backend_start) and the tickets of
    earlier holders that lost the slot while their replicas live on; those of dead
    replicas are dropped (nothing of theirs runs any more)."""
    start = connection.execute(
        "WITH held AS (UPDATE gate_tickets SET pid = -pid WHERE seq = %s)"
        " SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        (seq,),
    ).fetchone()
    earlier = connection.execute(
        f"SELECT seq, {_HELD_LIVE} FROM gate_tickets t WHERE gate = %s AND pid < 0 AND seq <> %s",
        (name, seq),
    ).fetchall()
    dead = [s for s, live in earlier if not live]
    if dead:
        connection.execute("DELETE FROM gate_tickets WHERE seq = ANY(%s)", (dead,))
    session = (connection.info.backend_pid, start[0] if start else None)
    return session, [s for s, live in earlier if live]


def session_alive(pool: psycopg_pool.ConnectionPool, session: tuple[int, Any]) -> bool:
    """Whether the session ``(pid, backend_start)`` still exists (asked on a pooled
    connection, never on the holding one, which the holder's task owns)."""
    with pool.connection(timeout=LOST_AFTER) as connection:
        return connection.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s AND backend_start = %s)",
            session,
        ).fetchone()[0]


def still_running(pool: psycopg_pool.ConnectionPool, tickets: list[int]) -> bool:
    """Whether an earlier holder whose held ``tickets`` remain may still run its chat."""
    with pool.connection(timeout=LOST_AFTER) as connection:
        return connection.execute(
            f"SELECT EXISTS (SELECT 1 FROM gate_tickets t WHERE seq = ANY(%s) AND {_HELD_LIVE})",
            (tickets,),
        ).fetchone()[0]


def release(
    pool: psycopg_pool.ConnectionPool, holding: Holding, key: int, channel: str, name: str
) -> bool:
    """Free the slot (advisory lock ``key``) of gate ``name`` and notify ``channel``; False
    when the hold was lost or the release fails: its connection is then closed (which frees
    the lock all the same) and its held ticket left behind (see :func:`drop`)."""
    connection = holding.connection
    if holding.lost:  # never unlock on it: its session may be gone, or hang
        connection.close()
    else:
        try:
            connection.execute("DELETE FROM gate_tickets WHERE seq = %s", (holding.seq,))
            connection.execute(
                "SELECT pg_advisory_unlock(%s), pg_notify(%s, %s)", (key, channel, name)
            )
        except psycopg.Error as exc:
            LOGGER.warning("gate %s: release failed (%s); closing its session", name, exc)
            connection.close()
    pool.putconn(connection)
    return not connection.closed
