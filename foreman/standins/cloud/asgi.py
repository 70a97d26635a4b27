"""Small raw-ASGI helpers of the cloud stand-ins: bodies, disconnects, lifespan, frames."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["lifespan", "read_body", "send_frame", "unless_disconnected"]


# --- ASGI helpers -------------------------------------------------------------------------


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        event = await receive()
        if event["type"] != "http.request":
            break
        chunks.append(event.get("body", b""))
        if not event.get("more_body", False):
            break
    return b"".join(chunks)


async def unless_disconnected(receive: Any, work: Callable[[], Awaitable[None]]) -> bool:
    """Run ``work`` unless the client hangs up first; returns False if it did.

    Raw ASGI apps are not cancelled on a disconnect (hypercorn drops later sends),
    so this is how a generation stops, and leaves ``in_flight``, when its client goes.
    """
    gone = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await work()
        nursery.cancel_scope.cancel()
    return not gone


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def send_frame(send: Any, frame: str) -> None:
    """One more piece of a streamed body (``more_body``)."""
    await send({"type": "http.response.body", "body": frame.encode(), "more_body": True})
