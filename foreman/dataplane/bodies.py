"""Request bodies that must be read before the answer: keep-alive stays healthy.

Go's ``net/http`` (so Ollama) reads up to 256 KiB of a body its handler left unread
and keeps the connection; hypercorn (which serves foreman and the stand-ins) instead
closes it, and a client that reuses that connection in the same instant can wait for
an answer that never comes. So the app reads what it would otherwise leave unread
(``docs/adr/0012-read-the-body-before-answering.md``), under any ASGI server:

* :func:`drain` before the front's own early answers (403, 401, 404);
* :class:`ReadBodyFirst` around the Quart control plane (and the stand-in), so a
  route that never reads its body (a 404, a 405, a redirect) has read it anyway.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DRAIN_LIMIT", "ReadBodyFirst", "drain"]

#: Bytes of an unread body read and dropped before an answer, as Go's net/http does.
DRAIN_LIMIT = 256 * 1024


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
