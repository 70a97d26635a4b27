"""The gate: one chat at a time on the worker model, in two lanes.

Chat and generate work reaches the target only through the gate: a synchronous
``/api/chat`` caller (lane ``interactive``) or the batch worker running a job from
``/jobs`` (lane ``batch``, unless the job asked for ``interactive``). The gate is
the queue's order: interactive before batch, first come first served within a
lane, and a holder is never pre-empted (``docs/adr/0010-the-queue.md``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import trio

from .errors import GateFull

__all__ = ["LANES", "Gate", "GateStatistics", "Lane", "run_gates"]

Lane = Literal["interactive", "batch"]
LANES: tuple[Lane, ...] = ("interactive", "batch")


@dataclass(frozen=True)
class GateStatistics:
    in_flight: int  # 0 or 1
    waiting: int  # in the interactive lane
    waiting_bytes: int  # request bodies held by the interactive lane
    waiting_batch: int  # in the batch lane (the batch worker: 0 or 1)


class Gate:
    """A slot with a two-lane, bounded waiting line.

    Args:
        max_waiting: how many may wait in the interactive lane while the slot is held.
        max_waiting_bytes: how many bytes of request bodies that lane may hold in all
            (each waiter states its body's size).

    Past either bound a newcomer is refused with :class:`~foreman.dataplane.errors.GateFull`
    (Ollama's own 503 for a full queue), so memory stays bounded however many
    clients pile up. The task that holds the gate is the one that talks to the
    target (a request's own task, or the batch worker), so cancelling it frees
    the gate at once.
    """

    def __init__(self, max_waiting: int, max_waiting_bytes: int = 1 << 62) -> None:
        self.max_waiting = max_waiting
        self.max_waiting_bytes = max_waiting_bytes
        self._held = False
        self._lanes: dict[Lane, deque[trio.Event]] = {lane: deque() for lane in LANES}
        self._waiting_bytes = 0

    @asynccontextmanager
    async def hold(self, body_bytes: int = 0, lane: Lane = "interactive") -> AsyncIterator[float]:
        """Wait for the slot in ``lane``, hold it for the body, yield the seconds waited.

        Args:
            body_bytes: the size of the request body this waiter keeps in memory.
            lane: ``interactive`` waiters always go before ``batch`` ones.

        Cancellation while waiting leaves the line at once; the slot is passed on
        when the body exits, however it exits.

        Raises:
            GateFull: the interactive lane is full (by count or by bytes).
        """
        start = trio.current_time()
        if self._held:
            await self._wait(lane, body_bytes)
        else:
            self._held = True
        try:
            yield trio.current_time() - start
        finally:
            self._pass_on()

    async def _wait(self, lane: Lane, body_bytes: int) -> None:
        if lane == "interactive" and (
            len(self._lanes[lane]) >= self.max_waiting
            or self._waiting_bytes + body_bytes > self.max_waiting_bytes
        ):
            raise GateFull()
        turn = trio.Event()
        self._lanes[lane].append(turn)
        if lane == "interactive":
            self._waiting_bytes += body_bytes
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # handed the slot just as we gave up: pass it on
                self._pass_on()
            else:
                self._lanes[lane].remove(turn)
            raise
        finally:
            if lane == "interactive":
                self._waiting_bytes -= body_bytes

    def _pass_on(self) -> None:
        for lane in LANES:
            if self._lanes[lane]:
                self._lanes[lane].popleft().set()  # the slot stays held, by the next one
                return
        self._held = False

    def statistics(self) -> GateStatistics:
        return GateStatistics(
            in_flight=int(self._held),
            waiting=len(self._lanes["interactive"]),
            waiting_bytes=self._waiting_bytes,
            waiting_batch=len(self._lanes["batch"]),
        )


async def run_gates(
    settings: Any,
    store: Any,
    replica: str,
    *,
    task_status: trio.TaskStatus[Callable[[str], Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Choose the gates at start: ``task_status.started(new_gate)``, where
    ``new_gate(name)`` makes the gate of the Ollama server ``name`` (its URL).

    With SQLite (one process) that is the in-process :class:`Gate` and this returns at
    once; with PostgreSQL (several replicas) it is
    :class:`~foreman.dataplane.clustergate.ClusterGate`, and this listens for the
    cluster's hand-overs until cancelled.
    """
    if not store.shared:
        task_status.started(lambda name: Gate(settings.max_queue, settings.max_waiting_bytes))
        return
    from .clustergate import ClusterGates  # psycopg only loads with a database URL

    gates = ClusterGates(store, replica, settings.max_queue, settings.max_waiting_bytes)
    await gates.run(task_status=task_status)
