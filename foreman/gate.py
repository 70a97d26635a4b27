"""The gate: one chat at a time on the worker model, first come first served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .errors import GateFull

__all__ = ["Gate", "GateStatistics"]


@dataclass(frozen=True)
class GateStatistics:
    in_flight: int  # 0 or 1
    waiting: int
    waiting_bytes: int  # request bodies held by the waiting line


class Gate:
    """A fair (FIFO) :class:`trio.Lock` with a bounded waiting line.

    Args:
        max_waiting: how many requests may wait while one holds the gate.
        max_waiting_bytes: how many bytes of request bodies the waiting line may
            hold in all (each waiter states its body's size).

    Past either bound a newcomer is refused with :class:`~foreman.errors.GateFull`
    (Ollama's own 503 for a full queue), so memory stays bounded however many
    clients pile up. A ``trio.Lock`` is released only by the task that acquired
    it: the request's own task holds the gate while it talks to the target.
    """

    def __init__(self, max_waiting: int, max_waiting_bytes: int = 1 << 62) -> None:
        self.max_waiting = max_waiting
        self.max_waiting_bytes = max_waiting_bytes
        self._lock = trio.Lock()
        self._waiting_bytes = 0

    @asynccontextmanager
    async def hold(self, body_bytes: int = 0) -> AsyncIterator[float]:
        """Wait for the gate, hold it for the body, and yield the seconds spent waiting.

        Args:
            body_bytes: the size of the request body this waiter keeps in memory.

        Cancellation while waiting leaves the line at once; the gate is
        released when the body exits, however it exits.

        Raises:
            GateFull: the waiting line is full (by count or by bytes).
        """
        if self._lock.locked() and (
            self._waiting() >= self.max_waiting
            or self._waiting_bytes + body_bytes > self.max_waiting_bytes
        ):
            raise GateFull()
        start = trio.current_time()
        self._waiting_bytes += body_bytes
        try:
            await self._lock.acquire()
        finally:
            self._waiting_bytes -= body_bytes
        try:
            yield trio.current_time() - start
        finally:
            self._lock.release()

    def _waiting(self) -> int:
        return self._lock.statistics().tasks_waiting

    def statistics(self) -> GateStatistics:
        return GateStatistics(
            in_flight=int(self._lock.locked()),
            waiting=self._waiting(),
            waiting_bytes=self._waiting_bytes,
        )
