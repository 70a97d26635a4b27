"""Run a :class:`~._standin.StandIn` on a real socket with hypercorn."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from . import _reasons as reasons

__all__ = ["serve"]

#: Bytes of a body its handler left unread that Go's net/http reads before answering.
_DRAIN_LIMIT = 256 * 1024


class _ReadBodyFirst:
    """ASGI middleware: read an HTTP request's body (up to ``limit`` bytes) before the app
    starts, as Go's ``net/http`` (so Ollama) reads what a handler left unread and keeps
    the connection, where hypercorn would close it. The app gets the body read so far as
    one ``http.request`` message (the rest, if any, as it comes)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pieces: list[bytes] = []
        size, more = 0, True
        first: dict[str, Any] | None = None
        while more and size <= self.limit:
            message = await receive()
            if message["type"] != "http.request":
                first = message  # http.disconnect: the app gets it as it is
                break
            pieces.append(message.get("body", b""))
            size += len(pieces[-1])
            more = message.get("more_body", False)
        if first is None:
            first = {"type": "http.request", "body": b"".join(pieces), "more_body": more}
        pending: list[dict[str, Any]] = [first]

        async def replay() -> Any:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


class Served(Protocol):
    """A stand-in: anything with an ASGI :attr:`app` (Ollama's, Anthropic's, OpenAI's)."""

    app: Any


async def serve(
    standin: Served,
    bind: str = "127.0.0.1:11434",
    *,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``standin.app`` on ``bind`` (``HOST:PORT``; port 0 picks a free one).

    Every stand-in is served this way: the Ollama one and those of
    :mod:`foreman.standins.anthropic` and :mod:`foreman.standins.openai`.

    Supports the trio start protocol:
    ``urls = await nursery.start(functools.partial(serve, standin, "127.0.0.1:0"))``
    returns the bound URLs (``["http://127.0.0.1:41234"]``). Returns after
    ``shutdown_trigger`` returns and in-flight responses finish (hypercorn's grace,
    3 s); cancelling it stops the server at once. ``standin.reachable`` has no
    effect here (stop the server instead). As with a loopback-bound Ollama, the
    Host check applies whatever the bind address.
    """
    reasons.install()  # "HTTP/1.1 200 OK", as Ollama
    config = Config()
    config.bind = [bind]
    config.include_server_header = False  # Ollama sends none
    config.accesslog = None
    config.errorlog = logging.getLogger("foreman.standins.ollama.server")  # the process's handlers
    await hypercorn_serve(
        # Go's net/http reads an unread body (up to 256 KiB) and keeps the connection
        _ReadBodyFirst(standin.app, _DRAIN_LIMIT),  # type: ignore[arg-type]
        config,
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )
