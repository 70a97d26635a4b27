"""What the Claude and OpenAI translators share: Ollama's side of a request and of its answer.

A translator turns an Ollama ``/api/chat`` or ``/api/generate`` request into a call to
another API through that API's SDK, and the answer's server-sent events back into
Ollama's NDJSON. This package holds everything that does not depend on the backend (:mod:`.request`,
:mod:`.answer`, :mod:`.errors`)::

    fields ─parse_request()─► Request ─backend: SDK call─► AsyncStream (its HTTP response)
                                                              │ sse_events(): (event, data)
                                                              │ backend's Events: → Delta*
                                                              ▼
    client ◄── NDJSON lines / one JSON object ◄── respond() ◄─┘  (Reply: Ollama's objects)

:func:`respond` reads the stream until the first :class:`Delta` (or the end) *before*
it returns, so that any failure up to that point raises a
:class:`~foreman.dataplane.errors.TargetError` while foreman can still choose the status, or
fall back to another backend. After it returns, failures never raise: the stream
ends with one ``{"error": "..."}`` line and no ``done: true`` line, as Ollama ends a
stream that fails midway. With ``"stream": false`` the whole answer is read before
:func:`respond` returns, so every failure raises.

The SDK sends the request (credentials, headers, error statuses as typed exceptions)
but its own stream iterator is never started: on an error event it raises from
inside its nested async generators and leaves the inner ones suspended, which trio
reports as a ``ResourceWarning`` when they are garbage-collected. Instead
:func:`sse_events` reads the SDK stream's ``response``, and :func:`close_stream`
finishes that generator chain by cancelling its pending read before closing. The
body :func:`respond` returns is a plain async iterator object, not a generator: its
``aclose()`` closes the upstream even when the body was never iterated.

Output is Ollama's, byte for byte where it can be: Go's JSON
(:func:`foreman.dataplane.jsonwire.dumps`),
keys in Ollama's struct order, ``created_at`` in RFC 3339 UTC with nanoseconds and
trailing zeros trimmed, durations in integer nanoseconds measured with trio's clock,
and metrics that are zero left out (Go's ``omitempty``: ``load_duration`` is never
sent, since no model is loaded). Deliberately absent: generate's ``context`` (there
are no token ids to give back) and ``thinking``.
"""

from __future__ import annotations

from .answer import (
    JSON_CONTENT_TYPE,
    NDJSON,
    Delta,
    Events,
    Finish,
    Reply,
    close_stream,
    created_at,
    load_answer,
    respond,
    sse_events,
)
from .errors import IncompleteStream, StreamError, status_error
from .request import Message, Options, Request, ToolCall, data_url, media_type, parse_request

__all__ = [
    "JSON_CONTENT_TYPE",
    "NDJSON",
    "Delta",
    "Events",
    "Finish",
    "IncompleteStream",
    "StreamError",
    "Message",
    "Options",
    "Reply",
    "Request",
    "ToolCall",
    "close_stream",
    "created_at",
    "data_url",
    "load_answer",
    "media_type",
    "parse_request",
    "respond",
    "sse_events",
    "status_error",
]
