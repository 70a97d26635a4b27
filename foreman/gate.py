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


class Gate:
    """A fair (FIFO) :class:`trio.Lock` with a bounded waiting line.

    Args:
        max_waiting: how many requests may wait while one holds the gate; the
            next one is refused with :class:`~foreman.errors.GateFull`
            (Ollama's own 503 for a full queue).

    A ``trio.Lock`` can be released only by the task that acquired it, so the
    task that holds the gate is the one that talks to the target (the relay
    pump), never the HTTP handler.
    """

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._lock = trio.Lock()

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[float]:
        """Wait for the gate, hold it for the body, and yield the seconds spent waiting.

        Cancellation while waiting leaves the line at once; the gate is
        released when the body exits, however it exits.

        Raises:
            GateFull: ``max_waiting`` requests are already waiting.
        """
        if self._lock.locked() and self._waiting() >= self.max_waiting:
            raise GateFull()
        start = trio.current_time()
        await self._lock.acquire()
        try:
            yield trio.current_time() - start
        finally:
            self._lock.release()

    def _waiting(self) -> int:
        return self._lock.statistics().tasks_waiting

    def statistics(self) -> GateStatistics:
        return GateStatistics(in_flight=int(self._lock.locked()), waiting=self._waiting())
