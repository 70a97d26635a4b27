"""Request bodies the data plane reads: whole (bounded), streamed, or with a new model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .errors import BodyTooLarge
from .jsonwire import dumps, request_fields

__all__ = ["ClientGone", "read_body", "stream_body", "with_model"]


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


async def read_body(scope: Any, receive: Any, limit: int) -> bytes:
    """The whole request body, up to ``limit`` bytes (``FOREMAN_MAX_BODY``).

    Raises:
        BodyTooLarge: the body (or its announced ``Content-Length``) is too large.
        ClientGone: the client went away first.
    """
    for name, value in scope["headers"]:
        if name.lower() == b"content-length" and value.isdigit() and int(value) > limit:
            raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if not message.get("more_body", False) and not chunks:
            if len(chunk) > limit:
                raise BodyTooLarge(limit)
            return chunk
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def with_model(body: bytes, model: str) -> bytes:
    """The request body with its ``model`` field (any case, as Go matches it) replaced.

    Read as :func:`~foreman.dataplane.jsonwire.request_fields` reads it (Go's way: invalid UTF-8
    replaced, anything after the first value ignored), so a body routing could read
    can always be rewritten; what follows the first value is dropped.
    """
    value = request_fields(body, lower=False)
    if not value:
        return body  # nothing routing could have read either
    keys = [k for k in value if k.lower() == "model"] or ["model"]
    for k in keys:
        value[k] = model
    return dumps(value)


async def stream_body(first: bytes, receive: Any) -> AsyncIterator[bytes]:
    """A request body as it arrives, for the target; raises ClientGone on a disconnect."""
    yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return
