"""Ollama's three faces on one port, and what foreman's routes share across them.

Ollama answers its native API (``/api/*``), an OpenAI-compatible face (``/v1/chat/
completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/responses``,
``/v1/models``, ``/v1/models/{model}``) and an Anthropic-compatible one
(``/v1/messages``). foreman routes every spelling of a path as Ollama would, by the
percent-decoded path (:func:`route_key`), and fails closed (``docs/adr/0019-faces.md``):

* gated (one generation at a time per Ollama server, the same line and lanes as
  ``/api/chat``): ``/api/chat``, ``/api/generate`` and **every** ``/v1/`` path that
  is not listed below, whatever its method (a generation route Ollama adds later is
  gated before foreman knows it);
* in parallel, no gate: ``POST /api/embed``, ``/api/embeddings``, ``/v1/embeddings``;
* relayed: ``/v1/models`` and ``/v1/models/{model}`` (listed by foreman when a user
  can reach more than the builtin backend), every other ``/api/*`` path and ``/``.

foreman's own errors take the face's shape (:func:`error_answer`): Ollama's
``{"error": message}``; OpenAI's ``{"error": {"message", "type", "param", "code"}}``
(``openai.NewError``); Anthropic's ``{"type": "error", "error": {"type", "message"}}``
(``anthropic.NewError``).
"""

from __future__ import annotations

import json
from typing import Final

from . import anthropic as anthropic_face
from . import openai as openai_face
from .jsonwire import JSON_CONTENT_TYPE, error_body

__all__ = [
    "ANTHROPIC",
    "EMBEDS",
    "EventTokens",
    "GATED",
    "LISTED",
    "NATIVE",
    "OPENAI",
    "error_answer",
    "face_of",
    "is_gated",
    "route_key",
    "stream_error",
    "usage_counts",
]

NATIVE: Final = "ollama"
OPENAI: Final = "openai"
ANTHROPIC: Final = "anthropic"

GATED = frozenset(
    {"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions", "/v1/responses"}
    | {"/v1/messages"}
)
EMBEDS = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})
#: ``/v1/`` paths that never generate: relayed (or listed), never gated.
LISTED = "/v1/models"


def route_key(path: str) -> str | None:
    """The route a percent-decoded path selects, or None for gin's 404.

    The key is lower-cased and loses a trailing slash, so that no spelling of a
    gated route escapes the gate (Ollama itself answers 404 or a redirect to
    such spellings). Dot segments and empty segments are refused outright, and so
    is everything outside ``/``, ``/api/`` and ``/v1/``.

    >>> route_key("/api/chat/"), route_key("/V1/Chat/Completions"), route_key("/v1/./messages")
    ('/api/chat', '/v1/chat/completions', None)
    """
    segments = path.split("/")
    if segments[0] != "" or "." in segments or ".." in segments or "" in segments[1:-1]:
        return None
    key = path.rstrip("/").lower() or "/"
    if key == "/" or key.startswith(("/api/", "/v1/")):
        return key
    return None


def face_of(key: str | None) -> str:
    """Which face a route key belongs to: ``ollama``, ``openai`` or ``anthropic``."""
    if key is None or not key.startswith("/v1/"):
        return NATIVE
    if key == "/v1/messages" or key.startswith("/v1/messages/"):
        return ANTHROPIC
    return OPENAI


def is_gated(key: str, method: str) -> bool:
    """Whether a request on route ``key`` must pass the gate (fail closed under ``/v1/``)."""
    if key in GATED:
        return True
    if not key.startswith("/v1/"):
        return False
    if key == "/v1/embeddings" or key == LISTED or key.startswith(LISTED + "/"):
        return False
    return True


def error_answer(face: str, status: int, message: str) -> tuple[bytes, bytes]:
    """foreman's own error in ``face``'s shape: ``(body, content type)``."""
    if face == OPENAI:
        return openai_face.error_body(status, message), b"application/json"
    if face == ANTHROPIC:
        return anthropic_face.error_body(status, message), b"application/json"
    return error_body(message), JSON_CONTENT_TYPE.encode()


def stream_error(face: str, key: str, message: str) -> bytes:
    """The event that ends a face's Server-Sent Events stream foreman cannot finish."""
    if face == ANTHROPIC:
        return anthropic_face.stream_error(message)
    return openai_face.stream_error(key, message)


def usage_counts(answer: object) -> tuple[int, int] | None:
    """(in, out) tokens from an OpenAI or Anthropic answer's (or event's) ``usage``."""
    return openai_face.tokens(answer) or anthropic_face.tokens(answer)


class EventTokens:
    """Reads token counts from a Server-Sent Events stream as it passes, bytes untouched.

    Only events that mention ``"usage"`` are parsed; the largest counts seen win
    (Anthropic gives input tokens in ``message_start`` and output in ``message_delta``).
    """

    __slots__ = ("counts", "_pending")

    def __init__(self) -> None:
        self.counts: tuple[int, int] | None = None
        self._pending = b""

    def feed(self, events: bytes) -> None:
        """``events``: whole events (each ends with a blank line)."""
        if b'"usage"' not in events:
            return
        for event in events.split(b"\n\n"):
            if b'"usage"' not in event:
                continue
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._add(line[5:])

    def _add(self, data: bytes) -> None:
        try:
            found = usage_counts(json.loads(data))
        except ValueError:
            return
        if found is not None:
            old = self.counts or (0, 0)
            self.counts = (max(old[0], found[0]), max(old[1], found[1]))
