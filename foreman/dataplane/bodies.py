"""Request bodies that must be read before the answer: keep-alive stays healthy.

Go's ``net/http`` (so Ollama) reads up to 256 KiB of a body its handler left unread
and keeps the connection; hypercorn (which serves foreman and the stand-ins) instead
closes it, and a client that reuses that connection in the same instant can wait for
an answer that never comes. So the app reads what it would otherwise leave unread
(``docs/adr/0012-read-the-body-before-answering.md``), under any ASGI server:

* :func:`drain` before the front's own early answers (403, 401, 404);
* :class:`ReadBodyFirst` around the Quart control plane (and the stand-in), so a
  route that never reads its body (a 404, a 405, a redirect) has read it anyway.

:class:`BodyGuard` bounds what a request body may take while it is read: time
(``FOREMAN_BODY_TIMEOUT``: 408) and, with every other body being read, memory
(``FOREMAN_MAX_READING_BYTES``: 503).
"""

from __future__ import annotations

import math
from typing import Any

import trio

from .errors import ForemanError

__all__ = [
    "DRAIN_LIMIT",
    "DRAIN_TIMEOUT",
    "BodyGuard",
    "BodyTimeout",
    "ReadBodyFirst",
    "ReadingBudget",
    "ReadingFull",
    "drain",
]

#: Bytes of an unread body read and dropped before an answer, as Go's net/http does.
DRAIN_LIMIT = 256 * 1024
#: Seconds an early answer (401, 403, 404) waits for the body it drops.
DRAIN_TIMEOUT = 1.0


class BodyTimeout(ForemanError):
    """The request body did not arrive in time: 408, and the connection closes."""

    status_code = 408


class ReadingFull(ForemanError):
    """Reading this body would take the bodies being read past their budget: 503."""

    status_code = 503


class ReadingBudget:
    """Bytes of request bodies being read now, all requests together, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if size and self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class BodyGuard:
    """Wraps an ASGI ``receive`` while the request body is read.

    ``whole=True`` (a body foreman holds whole: chats, embeds, the control plane): all of
    it must arrive within ``timeout`` seconds of the request's start, and its bytes count
    against ``budget`` until it has arrived. ``whole=False`` (a body streamed through to
    the target): each piece must come within ``timeout`` of the one before. Once the
    body is whole (or the client gone), ``receive`` is passed through untouched (the
    disconnect watchers use it).

    Raises (from :meth:`receive`):
        BodyTimeout: the body is late (408).
        ReadingFull: the budget is spent (503).
    """

    def __init__(
        self, receive: Any, timeout: float, *, whole: bool, budget: ReadingBudget | None
    ) -> None:
        self._receive = receive
        self.timeout = timeout
        self.whole = whole
        self.budget = budget
        self.deadline = trio.current_time() + timeout if whole else math.inf
        self.held = 0
        self.total = 0  # bytes of body received, for the caller's accounting
        self.done = False

    async def receive(self) -> Any:
        if self.done:
            return await self._receive()
        deadline = self.deadline if self.whole else trio.current_time() + self.timeout
        with trio.move_on_at(deadline):
            message = await self._receive()
            return self._count(message)
        self.release()
        raise BodyTimeout(
            f"the request body did not arrive within {self.timeout:g}s (FOREMAN_BODY_TIMEOUT)"
        )

    def _count(self, message: Any) -> Any:
        self.total += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.release()  # whole, or the client is gone: its bytes are the app's now
            return message
        size = len(message.get("body", b""))
        if self.whole and self.budget is not None:
            if not self.budget.take(size):
                self.release()
                raise ReadingFull(
                    "foreman is reading too many request bodies at once"
                    " (FOREMAN_MAX_READING_BYTES); try again later"
                )
            self.held += size
        return message

    def release(self) -> None:
        """Give back what this body took of the budget (at its end, and at the request's)."""
        self.done = True
        if self.budget is not None and self.held:
            self.budget.give(self.held)
        self.held = 0


async def drain(receive: Any, limit: int = DRAIN_LIMIT) -> bool:
    """Read and drop the request body (ASGI ``http.request`` messages), up to ``limit`` bytes.

    Returns True if the body was read to its end (the connection can be kept),
    False if it was longer than ``limit`` or the client went away (answer with
    ``Connection: close``). Call it only before anything else has read the body.
    """
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False  # http.disconnect
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
        if size > limit:
            return False


class ReadBodyFirst:
    """ASGI middleware: read an HTTP request's body (up to ``limit`` bytes) before the app
    starts, then hand it to the app as one ``http.request`` message (the rest, if any, as
    it comes). The app sees the same body; the server sees it read."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        first: dict[str, Any] | None = None
        while more and size <= self.limit:
            message = await receive()
            if message["type"] != "http.request":
                first = message  # http.disconnect: the app gets it as it is
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
        if first is None:
            first = {"type": "http.request", "body": b"".join(chunks), "more_body": more}
        chunks = []
        pending: list[dict[str, Any]] = [first]

        async def replay() -> Any:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)
