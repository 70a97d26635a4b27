"""Cancel a request whose client went away, watching only the requests that run long."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from .exchange import Exchange

__all__ = ["WATCH_AFTER", "Disconnects"]


#: Seconds a request runs before foreman watches for its client going away. Most
#: answers (an embed, a ``/api/show``) come sooner, and starting a watcher costs more
#: than the rest of such a request; a client that leaves is noticed this much later.
WATCH_AFTER = 0.05


class _Watch:
    __slots__ = ("done", "due", "exchange", "receive", "scope")

    def __init__(self, exchange: Exchange, receive: Any, due: float) -> None:
        self.exchange, self.receive, self.due = exchange, receive, due
        self.done = False
        self.scope: trio.CancelScope | None = None


class Disconnects:
    """Cancels a request whose client goes away; a watcher only for the long ones.

    :meth:`watching` notes a request; one task (:meth:`run`, in the root nursery)
    starts a watcher for every request still running :data:`WATCH_AFTER` seconds
    later, checking every half of that. The watcher takes every later ``receive()``
    (the request body must be read already): on ``http.disconnect`` before the
    answer is complete it cancels the request (``exchange.cancel_scope``, outcome
    ``cancelled``): a chat waiting at the gate leaves the line, a running one is
    aborted upstream and frees the gate. Watchers run in the root nursery so that an
    error of the request never comes out wrapped in an exception group.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._pending: deque[_Watch] = deque()
        self._wake = trio.Event()

    @asynccontextmanager
    async def watching(self, receive: Any, exchange: Exchange) -> AsyncIterator[None]:
        """Within this block, ``exchange`` is cancelled if its client goes away."""
        watch = _Watch(exchange, receive, trio.current_time() + WATCH_AFTER)
        self._pending.append(watch)
        self._wake.set()
        try:
            yield
        finally:
            watch.done = True
            if watch.scope is not None:
                watch.scope.cancel()

    async def run(self) -> None:
        """Start the watchers that are due; runs until cancelled."""
        pending = self._pending
        while True:
            if not pending:
                self._wake = trio.Event()
                await self._wake.wait()
            now = trio.current_time()
            while pending and (pending[0].done or pending[0].due <= now):
                watch = pending.popleft()
                if not watch.done:
                    watch.scope = trio.CancelScope()
                    self._nursery.start_soon(self._watch, watch)
            if pending:
                await trio.sleep_until(max(pending[0].due, now + WATCH_AFTER / 2))

    @staticmethod
    async def _watch(watch: _Watch) -> None:
        assert watch.scope is not None
        with watch.scope:
            while (await watch.receive())["type"] != "http.disconnect":
                pass
            exchange = watch.exchange
            if not exchange.response_complete:  # not the disconnect after a full answer
                exchange.outcome = "cancelled"
                exchange.cancel_scope.cancel()
