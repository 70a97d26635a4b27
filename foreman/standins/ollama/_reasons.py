"""Reason phrases on the stand-ins' HTTP/1.1 status lines, as Ollama sends them.

Ollama (Go's ``net/http``) writes ``HTTP/1.1 200 OK``; hypercorn builds h11's
``Response`` events without a reason, so h11 writes ``HTTP/1.1 200 `` (an empty
reason, valid HTTP but not what a byte-for-byte Ollama client, proxy log or
``curl -i`` shows). :func:`install` gives hypercorn's HTTP/1.1 protocol a view of
h11 whose ``Response`` fills in the standard phrase (``http.HTTPStatus``, the same
phrases as Go's ``http.StatusText`` for every status Ollama or foreman sends).
Only hypercorn's module sees the change; h11 itself, and httpx2 on it, are untouched.
(foreman, which shares no code with its oracles, has its own: ``foreman.serving``.)
"""

from __future__ import annotations

import http
import types
from typing import Any

import h11
import hypercorn.protocol.h11 as hypercorn_h11

__all__ = ["install"]


def _response(*, status_code: int, headers: Any, reason: bytes = b"", **rest: Any) -> h11.Response:
    if not reason:
        try:
            reason = http.HTTPStatus(status_code).phrase.encode("ascii")
        except ValueError:  # a status without a standard phrase keeps an empty reason
            pass
    return h11.Response(status_code=status_code, headers=headers, reason=reason, **rest)


class _H11WithReasons(types.ModuleType):
    """h11, but ``Response`` is :func:`_response`."""

    Response = staticmethod(_response)

    def __getattr__(self, name: str) -> Any:
        return getattr(h11, name)


def install() -> None:
    """Make hypercorn's HTTP/1.1 status lines carry reason phrases (idempotent)."""
    if not isinstance(hypercorn_h11.h11, _H11WithReasons):
        hypercorn_h11.h11 = _H11WithReasons("h11")  # type: ignore[assignment]
