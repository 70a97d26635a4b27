"""One gate per Ollama server across every replica (``FOREMAN_DATABASE_URL``).

The same interface as :class:`~foreman.dataplane.gate.Gate` (``hold(body_bytes, lane)``,
``statistics()``, ``max_waiting``), with the slot and the line in PostgreSQL
(``docs/adr/0021-one-gate-across-replicas.md``):

- **The slot** is a session-level advisory lock (``pg_try_advisory_lock``) taken on a
  connection the holder keeps for the length of the chat. PostgreSQL frees it when that
  session ends, so a replica killed while holding it frees it with its connection. A
  replica cut off from the database while its chat still runs ends that chat itself
  (:mod:`~foreman.dataplane.gatewatch`, :class:`~.errors.GateLost`) before PostgreSQL frees
  the lock; the next holder waits until a chat whose slot was lost has ended.
- **The line** is ``gate_tickets``: one row per waiter, numbered on arrival, tied to the
  replica's listening session (its ``pg_backend_pid()`` and start). Rows of a session that
  no longer exists are not counted: a dead replica's places are dropped with it.
- **The order**: interactive before batch, then arrival (``seq``). Only a replica's own
  first waiter asks whether it is the cluster's first, and takes the lock only then.
- **Wake-ups** by ``LISTEN/NOTIFY``: leaving the line or releasing the slot notifies
  channel ``foreman_gate`` with the gate's name. A dead session sends nothing, so a
  replica with waiters also looks again every :data:`RECHECK` seconds.
- ``FOREMAN_MAX_QUEUE`` bounds the cluster's interactive line; ``FOREMAN_MAX_WAITING_BYTES``
  stays per replica (it bounds this process's memory). :meth:`ClusterGate.statistics`
  counts this replica's holder and waiters.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import psycopg
import psycopg_pool
import trio

from ..store.postgres import PostgresStore, connect
from . import gatewatch
from .errors import ForemanError, GateFull, GateLost
from .gate import GateStatistics, Lane
from .gatewatch import LIVE, LOST_AFTER, Holding

__all__ = [
    "CHANNEL",
    "LOST_AFTER",
    "RECHECK",
    "ClusterGate",
    "ClusterGates",
    "GateUnavailable",
    "lock_key",
]

LOGGER = logging.getLogger("foreman.gate")

CHANNEL = "foreman_gate"
RECHECK = 1.0  # seconds: how soon a dead replica's slot or places are noticed
#: TCP keepalives on the sessions that hold a slot or a place, on both ends: a replica cut
#: off by the network (no FIN, no RST) loses them after about 5 + 2 * 3 = 11 s, not hours.
#: Keepalives probe an idle connection only: ``tcp_user_timeout`` (ms) also drops, within
#: 10 s, one whose data goes unacknowledged (a reply or a NOTIFY sent into the partition on
#: the server, a watchdog's question on the client), which would otherwise hold the slot,
#: or a worker thread, for the ~15 minutes of TCP's retransmissions.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10000,
    "options": "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2"
    " -c tcp_keepalives_count=3 -c tcp_user_timeout=10000",
}

_FIRST = (
    f"SELECT seq FROM gate_tickets t WHERE gate = %s AND {LIVE}"
    " ORDER BY lane = 'batch', seq LIMIT 1"
)


class GateUnavailable(ForemanError):
    """503: the database that holds the cluster's gate does not answer, so no chat may
    start (the gate fails closed)."""

    status_code = 503

    def __init__(self, detail: str) -> None:
        super().__init__(f"foreman's database is unreachable, please try again: {detail}")


def lock_key(name: str) -> int:
    """The advisory lock (a signed 64-bit key) of the gate of the Ollama server ``name``."""
    digest = hashlib.sha256(b"foreman-gate:" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class ClusterGate:
    """The slot of one Ollama server, shared by every replica; see the module's docstring."""

    def __init__(self, gates: ClusterGates, name: str, max_waiting: int, max_bytes: int) -> None:
        self.name, self.key = name, lock_key(name)
        self.max_waiting = max_waiting
        self.max_waiting_bytes = max_bytes
        self._gates = gates
        self._waiters: dict[int, Lane] = {}  # this replica's tickets, by seq
        self._waiting_bytes = 0
        self._held = False  # this replica holds the slot
        self._changed = trio.Event()

    def wake(self) -> None:
        """Let this replica's first waiter look again (the line or the slot changed)."""
        self._changed.set()
        self._changed = trio.Event()

    @property
    def waiting(self) -> bool:
        return bool(self._waiters)

    @asynccontextmanager
    async def hold(self, body_bytes: int = 0, lane: Lane = "interactive") -> AsyncIterator[float]:
        """Wait for the cluster's slot in ``lane``, hold it for the body, yield the seconds
        waited (as :meth:`Gate.hold`). While the body runs, a watchdog checks every
        :data:`RECHECK` seconds that the session holding the slot still exists
        (:mod:`foreman.dataplane.gatewatch`); when it is gone, or gives no word for
        :data:`LOST_AFTER` seconds, the body is cancelled.

        Raises:
            GateFull: the cluster's interactive line is full, or this replica's bytes are.
            GateUnavailable: the database does not answer.
            GateLost: the slot was lost while the body ran, and the body was cancelled.
        """
        start = trio.current_time()
        if lane == "interactive" and self._waiting_bytes + body_bytes > self.max_waiting_bytes:
            raise GateFull()
        if not self._gates.listening:  # a ticket needs a live session: fail at once
            raise GateUnavailable("no session with the database")
        try:
            holding = await self._queue(lane, body_bytes)
        except (sqlite3.Error, psycopg.Error) as exc:  # psycopg_pool's PoolTimeout too
            raise GateUnavailable(str(exc).splitlines()[0] if str(exc) else "no answer") from exc
        self._held = True
        self._gates.watch(self, holding)
        try:
            with holding.body:
                if holding.fences:  # an earlier holder lost the slot: its chat ends first
                    running = partial(gatewatch.still_running, self._gates.pool, holding.fences)
                    await gatewatch.wait_out(running, RECHECK / 10, RECHECK + LOST_AFTER)
                    self._gates.forget(holding.fences)
                yield trio.current_time() - start
        finally:
            holding.watching.cancel()
            self._held = False
            with trio.CancelScope(shield=True):
                await self._gates.let_go(self, holding)
            self.wake()
        if holding.body.cancelled_caught:
            await trio.lowlevel.checkpoint_if_cancelled()  # a cancellation from outside wins
            raise GateLost(holding.lost)

    async def _queue(self, lane: Lane, body_bytes: int) -> Holding:
        """Take a ticket and wait for the slot; returns the hold."""
        while True:
            seq = await self._gates.store.call(self._gates.enter, self, lane)
            if seq is None:
                raise GateFull()
            self._waiters[seq] = lane
            if lane == "interactive":
                self._waiting_bytes += body_bytes
            taken = None
            try:
                taken = await self._wait_turn(seq)
            finally:
                del self._waiters[seq]
                if lane == "interactive":
                    self._waiting_bytes -= body_bytes
                if not isinstance(taken, tuple):  # cancelled, failed, lost
                    with trio.CancelScope(shield=True):
                        await self._gates.leave(self, seq)
            if isinstance(taken, tuple):
                return Holding(seq, *taken)
            await trio.sleep(RECHECK)  # our session was lost (the database restarted): again

    async def _wait_turn(self, seq: int) -> Any:
        """What :meth:`ClusterGates.try_take` took, or False when the ticket was lost."""
        while True:
            changed = self._changed
            first = min(self._waiters, key=lambda s: (self._waiters[s] == "batch", s))
            if first == seq and not self._held:
                outcome = await trio.to_thread.run_sync(self._gates.try_take, self, seq)
                if outcome is not None:
                    return outcome
            await changed.wait()

    def statistics(self) -> GateStatistics:
        lanes = list(self._waiters.values())
        return GateStatistics(
            in_flight=int(self._held),
            waiting=lanes.count("interactive"),
            waiting_bytes=self._waiting_bytes,
            waiting_batch=lanes.count("batch"),
        )


class ClusterGates:
    """A replica's side of the cluster's gates: its listening session, the connections
    that hold slots, and its :class:`ClusterGate` objects by name.

    Args:
        store: the PostgreSQL store (its pool serves the tickets).
        replica: this replica's id (shown in ``gate_tickets.replica``).
        max_waiting: ``FOREMAN_MAX_QUEUE``, for the cluster's line of each gate.
        max_waiting_bytes: ``FOREMAN_MAX_WAITING_BYTES``, for this replica.
    """

    def __init__(
        self, store: PostgresStore, replica: str, max_waiting: int, max_waiting_bytes: int
    ) -> None:
        self.store, self.replica = store, replica
        self.max_waiting, self.max_waiting_bytes = max_waiting, max_waiting_bytes
        self.gates: dict[str, ClusterGate] = {}
        self.session = (0, 0.0)  # the listening session's pid and start
        self.listening = False  # that session is open
        self._orphans: dict[int, ClusterGate] = {}  # tickets we failed to remove
        self._nursery: trio.Nursery  # run()'s: watchdogs, tickets to remove
        self.pool = psycopg_pool.ConnectionPool(
            store.url,
            min_size=0,
            max_size=16,
            kwargs={"autocommit": True, **KEEPALIVES},
            open=False,
        )

    def new(self, name: str) -> ClusterGate:
        """The gate of the Ollama server ``name`` (its URL, lower case, no trailing slash)."""
        gate = self.gates.get(name)
        if gate is None:
            gate = self.gates[name] = ClusterGate(
                self, name, self.max_waiting, self.max_waiting_bytes
            )
        return gate

    # --- in the store's threads ------------------------------------------------------

    def enter(self, db: Any, gate: ClusterGate, lane: Lane) -> int | None:
        """Insert a ticket; None when the cluster's interactive line is full."""
        if lane == "interactive":
            waiting = db.execute(
                f"SELECT COUNT(*) FROM gate_tickets t WHERE gate = ? AND lane = ? AND {LIVE}",
                (gate.name, lane),
            ).fetchone()[0]
            if waiting >= gate.max_waiting:
                return None
        pid, since = self.session
        return db.execute(
            "INSERT INTO gate_tickets (gate, lane, replica, pid, since) VALUES (?, ?, ?, ?, ?)"
            " RETURNING seq",
            (gate.name, lane, self.replica, pid, since),
        ).fetchone()[0]

    def try_take(self, gate: ClusterGate, seq: int) -> tuple[Any, ...] | bool | None:
        """Take the slot if ``seq`` is the cluster's first live ticket and the lock is free:
        the arguments of a :class:`Holding` but ``seq``; None to wait; False if the ticket
        is lost."""
        connection = self.pool.getconn()
        try:
            first = connection.execute(_FIRST, (gate.name,)).fetchone()
            if first is not None and first[0] == seq:
                taken = connection.execute("SELECT pg_try_advisory_lock(%s)", (gate.key,))
                if taken.fetchone()[0]:
                    return (connection, *gatewatch.mark_held(connection, gate.name, seq))
                self.pool.putconn(connection)
                return None
            mine = connection.execute(
                f"SELECT EXISTS (SELECT 1 FROM gate_tickets t WHERE seq = %s AND {LIVE})",
                (seq,),
            ).fetchone()[0]
            self.pool.putconn(connection)
            return None if mine else False
        except BaseException:
            connection.close()  # it may hold the lock now: closing frees it
            self.pool.putconn(connection)
            raise

    async def let_go(self, gate: ClusterGate, holding: Holding) -> None:
        """End a hold (:func:`~.gatewatch.release`, in a worker thread); a held ticket it
        leaves behind is dropped by :meth:`forget`."""
        release = partial(gatewatch.release, self.pool, holding, gate.key, CHANNEL, gate.name)
        if not await trio.to_thread.run_sync(release):
            self.forget([holding.seq])

    def forget(self, tickets: list[int]) -> None:
        """Drop these held tickets from the gates' own nursery, so that a database that
        hangs holds no chat up (best effort: one left behind costs its next holder at most
        RECHECK + LOST_AFTER seconds)."""
        with contextlib.suppress(RuntimeError):  # the nursery is closed: foreman stops
            self._nursery.start_soon(gatewatch.drop, self.pool, tickets)

    def watch(self, gate: ClusterGate, holding: Holding) -> None:
        """Start the watchdog of ``holding`` (:func:`~.gatewatch.watch`)."""
        alive = partial(gatewatch.session_alive, self.pool, holding.session)
        try:
            dog = partial(gatewatch.watch, holding, gate.name, alive, RECHECK, LOST_AFTER)
            self._nursery.start_soon(dog)
        except RuntimeError:  # the nursery is closed: foreman stops, and no chat runs unwatched
            holding.lose("foreman is stopping")

    async def leave(self, gate: ClusterGate, seq: int) -> None:
        """Give a place up (cancelled, refused or lost); retried later if the store fails."""
        try:
            await self.store.call(_leave, gate.name, seq)
        except sqlite3.Error as exc:
            LOGGER.warning("gate %s: could not leave the line (%s); retrying", gate.name, exc)
            self._orphans[seq] = gate
        gate.wake()

    # --- the listening session -------------------------------------------------------

    def _listen(self) -> psycopg.Connection[Any]:
        listener = connect(self.store.url, autocommit=True, **KEEPALIVES)
        listener.execute(f"LISTEN {CHANNEL}")
        row = listener.execute(
            "SELECT pg_backend_pid(), extract(epoch FROM backend_start)::float8"
            " FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row is not None
        self.session = (row[0], row[1])
        return listener

    @staticmethod
    def _notified(listener: psycopg.Connection[Any], timeout: float) -> set[str]:
        return {n.payload for n in listener.notifies(timeout=timeout, stop_after=1)}

    async def run(
        self, *, task_status: trio.TaskStatus[Callable[[str], Any]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen for the cluster's hand-overs and wake this replica's waiters, and run the
        holders' watchdogs; never returns.

        ``task_status.started(self.new)`` once the listening session is open.

        Raises:
            sqlite3.OperationalError: no listening session could be opened at the start.
        """
        await trio.to_thread.run_sync(self.pool.open)
        try:
            try:
                listener = await trio.to_thread.run_sync(self._listen)
            except psycopg.Error as exc:
                raise sqlite3.OperationalError(str(exc)) from exc
            async with trio.open_nursery() as self._nursery:
                task_status.started(self.new)
                await self._keep_listening(listener)
        finally:
            self.listening = False
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.pool.close)

    async def _keep_listening(self, listener: psycopg.Connection[Any]) -> None:
        while True:
            self.listening = True
            try:
                await self._serve(listener)
            except psycopg.Error as exc:
                self.listening = False
                LOGGER.warning("gate: listening session lost (%s)", exc)
                for gate in self.gates.values():
                    gate.wake()  # their tickets died with the session: they take new ones
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(listener.close)
            while True:
                try:
                    listener = await trio.to_thread.run_sync(self._listen)
                    break
                except psycopg.Error as exc:
                    LOGGER.warning("gate: cannot listen (%s); retrying", exc)
                    await trio.sleep(RECHECK)

    async def _serve(self, listener: psycopg.Connection[Any]) -> None:
        looked = trio.current_time()
        while True:
            names = await trio.to_thread.run_sync(self._notified, listener, RECHECK)
            for seq, gate in list(self._orphans.items()):
                del self._orphans[seq]
                await self.leave(gate, seq)
            recheck = trio.current_time() - looked >= RECHECK  # a dead session sends nothing
            if recheck:
                looked = trio.current_time()
            for gate in self.gates.values():
                if gate.name in names or (recheck and gate.waiting):
                    gate.wake()


def _leave(db: Any, name: str, seq: int) -> None:
    db.execute("DELETE FROM gate_tickets WHERE seq = ?", (seq,))
    db.execute("SELECT pg_notify(?, ?)", (CHANNEL, name))
