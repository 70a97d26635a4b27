"""Response helpers shared by the stand-in's routes, and the per-request :class:`Lease`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Response, request

from ._wire import JSON, dumps

__all__ = ["Lease", "abort_connection", "error", "json_response", "lease", "text"]

LEASE_KEY = "standin.lease"
ABORT_KEY = "standin.abort"


class Lease:
    """Sync cleanups for one request, run once, newest first (safe in cancelled code)."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def close(self) -> None:
        while self._callbacks:
            self._callbacks.pop()()


def lease() -> Lease:
    """The current request's :class:`Lease`."""
    return request.scope[LEASE_KEY]


def abort_connection() -> Response:
    """Make the middleware break the connection instead of sending this response."""
    request.scope[ABORT_KEY] = True
    return Response(b"", 500)


def json_response(body: Any, status: int = 200) -> Response:
    """gin's ``c.JSON``: Go-encoded, no trailing newline, ``application/json; charset=utf-8``."""
    return Response(dumps(body), status, content_type=JSON)


def error(status: int, message: str) -> Response:
    """Ollama's error shape ``{"error": message}``."""
    return json_response({"error": message}, status)


def text(status: int, text: str, content_type: str = "text/plain") -> Response:
    return Response(text.encode(), status, content_type=content_type)
