"""JSON exactly as Ollama (Go ``encoding/json`` under gin's ``c.JSON``) writes it.

Compact separators, raw UTF-8, ``<`` ``>`` ``&`` escaped as ``\\u003c``
``\\u003e`` ``\\u0026``, no trailing newline; content type
``application/json; charset=utf-8`` (reference §1). foreman only encodes what it
says itself (errors, health); the target's bytes are never re-encoded.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["JSON_CONTENT_TYPE", "dumps", "error_body"]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"

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
