"""JSON exactly as Ollama (Go ``encoding/json`` under gin's ``c.JSON``) writes it.

Compact separators, raw UTF-8, ``<`` ``>`` ``&`` escaped as ``\\u003c``
``\\u003e`` ``\\u0026``, no trailing newline; content type
``application/json; charset=utf-8``. foreman only encodes what it
says itself (errors, health); the target's bytes are never re-encoded.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

__all__ = ["JSON_CONTENT_TYPE", "dumps", "error_body", "request_fields", "rfc3339"]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"

_DECODER = json.JSONDecoder()

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def dumps(value: Any) -> bytes:
    """Encode ``value`` as Go would; ``<>&`` only ever occur inside JSON strings."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.translate(_GO_ESCAPES).encode()


def error_body(message: str) -> bytes:
    """Ollama's error shape, ``{"error":"<message>"}``."""
    return dumps({"error": message})


def request_fields(body: bytes, *, lower: bool = True) -> dict[str, Any]:
    """A JSON request body's top-level fields as Ollama's decoder reads them; else ``{}``.

    Go's ``json.Decoder`` reads the *first* JSON value and ignores what follows,
    takes invalid UTF-8 (as U+FFFD) and matches field names case-insensitively,
    so this does too: keys come back lower-cased. A body Python cannot parse
    (not JSON, or nested deeper than its recursion limit) gives ``{}``: callers
    must then act as if they knew nothing (the gate still applies). ``lower=False``
    keeps the keys as sent.
    """
    text = body.decode("utf-8", "replace").lstrip(" \t\r\n")
    try:
        value, _ = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {key.lower(): item for key, item in value.items()} if lower else value


def rfc3339(seconds: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC (``2026-11-23T10:00:00.123456Z``), or None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
