"""Small ASGI helpers of the OpenAI stand-in: bodies, disconnects, lifespan, sending."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

# --- ASGI helpers -------------------------------------------------------------------------


def _json(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        event = await receive()
        if event["type"] != "http.request":
            break
        chunks.append(event.get("body", b""))
        if not event.get("more_body", False):
            break
    return b"".join(chunks)


async def _unless_disconnected(receive: Any, work: Callable[[], Awaitable[None]]) -> bool:
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


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send(
    send: Any, status: int, body: Any, request_id: str, extra: dict[str, str] | None = None
) -> None:
    payload = _json(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if request_id:
        headers += [(b"x-request-id", request_id.encode()), (b"openai-version", b"2020-10-01")]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _send_data(send: Any, data: str) -> None:
    chunk = f"data: {data}\n\n".encode()
    await send({"type": "http.response.body", "body": chunk, "more_body": True})
