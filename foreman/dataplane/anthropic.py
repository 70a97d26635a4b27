"""The Anthropic face: foreman's own answers in Anthropic's shapes (as Ollama's ``anthropic/``).

* errors: ``{"type": "error", "error": {"type", "message"}}``, ``error.type`` from the
  status as ``anthropic.NewError`` sets it (``invalid_request_error`` 400,
  ``authentication_error`` 401, ``permission_error`` 403, ``not_found_error`` 404,
  ``request_too_large`` 413 (Anthropic's own), ``rate_limit_error`` 429,
  ``overloaded_error`` 503 and 529, else ``api_error``), ``application/json``;
* a stream foreman cannot finish ends with ``event: error`` and
  ``{"type": "error", "error": {"type": "api_error", "message"}}`` (Anthropic's
  ``StreamErrorEvent``; the official SDK raises on it);
* token counts from ``usage`` (``input_tokens``, ``output_tokens``): a whole message,
  ``message_start`` (input) and ``message_delta`` (output, and input on Ollama's).
"""

from __future__ import annotations

from typing import Any

from .jsonwire import dumps

__all__ = ["FORWARDED", "error_body", "stream_error", "tokens"]

#: Request headers a Claude backend receives from the client (besides the body's type).
FORWARDED = frozenset({b"content-type", b"accept", b"anthropic-version", b"anthropic-beta"})

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def _error(status: int, message: str) -> dict[str, Any]:
    return {"type": _TYPES.get(status, "api_error"), "message": message}


def error_body(status: int, message: str) -> bytes:
    """``anthropic.NewError(status, message)`` (without Ollama's random ``request_id``)."""
    return dumps({"type": "error", "error": _error(status, message)}) + b"\n"


def stream_error(message: str) -> bytes:
    """The ``event: error`` that ends a Messages stream foreman cannot finish."""
    data = dumps({"type": "error", "error": _error(500, message)})
    return b"event: error\ndata: " + data + b"\n\n"


def tokens(answer: Any) -> tuple[int, int] | None:
    """(in, out) from a message's or event's ``usage`` (``message_start`` nests it)."""
    if not isinstance(answer, dict):
        return None
    usage = answer.get("usage")
    if not isinstance(usage, dict) and isinstance(answer.get("message"), dict):
        usage = answer["message"].get("usage")
    if not isinstance(usage, dict):
        return None
    given = usage.get("input_tokens"), usage.get("output_tokens")
    if not any(isinstance(n, int) for n in given):
        return None
    return tuple(n if isinstance(n, int) else 0 for n in given)  # type: ignore[return-value]
