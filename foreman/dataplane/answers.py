"""Small pieces every face's answer uses: whole answers, ``Retry-After``, the user's name.

:func:`respond` sends a whole ASGI answer with its ``Content-Length``; :func:`retry_after`
gives a 503's ``Retry-After``; :func:`user_name` reads the request's user.
"""

from __future__ import annotations

import math
from typing import Any

from ..users import USER_SCOPE_KEY
from .errors import GateFull, TargetUnreachable
from .jsonwire import JSON_CONTENT_TYPE

__all__ = ["JSON_HEADERS", "respond", "retry_after", "user_name"]

#: The ``Content-Type`` header of a JSON answer in Ollama's spelling.
JSON_HEADERS = [(b"content-type", JSON_CONTENT_TYPE.encode())]


def user_name(scope: Any) -> str:
    """The name of the request's user (``anonymous`` without one)."""
    user = scope.get(USER_SCOPE_KEY)
    return user.name if user is not None else "anonymous"


async def respond(
    send: Any,
    status: int,
    body: bytes,
    *,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Send a whole answer (with its ``Content-Length``)."""
    has_length = any(k.lower() == b"content-length" for k, _ in headers)
    if not has_length:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def retry_after(
    exc: Exception, poll_interval: float, busy_too: bool = False
) -> list[tuple[bytes, bytes]]:
    """``Retry-After`` for a 503 while the target is unreachable (seconds, at most 30);
    with ``busy_too`` (the OpenAI and Anthropic faces, whose SDKs honour it) also
    for a full gate (1 s)."""
    if isinstance(exc, TargetUnreachable):
        return [(b"retry-after", str(math.ceil(min(poll_interval, 30))).encode())]
    if busy_too and isinstance(exc, GateFull):
        return [(b"retry-after", b"1")]
    return []
