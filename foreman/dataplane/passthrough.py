"""A face's request to the backend that speaks it natively: no translation.

``/v1/messages`` routed to a Claude backend goes to Anthropic's Messages API as the
client wrote it (only ``model`` rewritten by routing), with the backend's key in
``x-api-key`` and the client's ``anthropic-version``/``anthropic-beta``; the OpenAI
routes routed to an OpenAI-compatible backend go to its ``/chat/completions``,
``/completions``, ``/responses``, ``/embeddings`` with its key as a bearer token.
The client's own key is never sent. The answer comes back as the API gave it: its
status, ``Content-Type`` and body, a Server-Sent Events stream event by event
(:func:`~foreman.dataplane.relay.relay_events`, which also ends a broken stream with
the face's error event).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import trio

from ..backends import ApiBackend
from . import anthropic as anthropic_face
from .errors import classify
from .exchange import Exchange
from .relay import SSE, relay_events

__all__ = ["relay_api"]

LOGGER = logging.getLogger("foreman.dataplane.passthrough")

#: The Messages API version sent for a client that named none (the SDKs name this one).
VERSION = b"2023-06-01"

#: Response headers passed back from the API (besides foreman's own).
_RELAYED = frozenset({"content-type", "request-id", "x-request-id", "retry-after"})


async def relay_api(
    backend: ApiBackend,
    path: str,
    body: bytes,
    scope: Any,
    send: Any,
    exchange: Exchange,
    extra: list[tuple[bytes, bytes]],
) -> None:
    """Send ``body`` to ``backend``'s ``path`` and relay the answer to ``send``.

    Raises:
        TargetError: the API could not be reached, or did not answer in time;
            nothing has been sent to the client.
    """
    translator: Any = backend.translator
    kind = f"{backend.type} backend"
    headers = [(k, v) for k, v in scope["headers"] if k.lower() in anthropic_face.FORWARDED]
    if backend.type == "anthropic" and not any(k == b"anthropic-version" for k, _ in headers):
        headers.append((b"anthropic-version", VERSION))  # Ollama's face needs none; Claude does
    try:
        response = await translator.send_native(path, body, headers)
    except httpx2.HTTPError as exc:
        raise classify(exc, backend.name, kind=kind) from exc
    try:
        relayed = [
            (k.lower(), v) for k, v in response.headers.raw if k.decode().lower() in _RELAYED
        ]
        start = {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [*relayed, *extra],
        }
        chunks = _chunks(response, backend.name, kind)
        if response.headers.get("content-type", "").startswith(SSE):
            await send(start)
            exchange.outcome = await relay_events(chunks, send, exchange)
            return
        parts = [chunk async for chunk in chunks]
        whole = b"".join(parts)
        if exchange.count_tokens:
            exchange.final_line = whole
        start["headers"].append((b"content-length", str(len(whole)).encode()))
        await send(start)
        await send({"type": "http.response.body", "body": whole, "more_body": False})
    finally:
        with trio.CancelScope(shield=True):
            await response.aclose()


async def _chunks(response: httpx2.Response, name: str, kind: str) -> AsyncIterator[bytes]:
    """The answer's bytes as they come; a transport failure as foreman's TargetError."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx2.HTTPError as exc:
        raise classify(exc, name, kind=kind) from exc
