"""What the stand-ins of the cloud APIs share: the server shell of :mod:`.anthropic` and
:mod:`.openai`.

Both answer their SDK over raw ASGI the same way, so this package holds it once:

* :class:`CloudStandIn`, the base class: the key, models and reply; the faults
  (:data:`FAULTS`: ``overloaded``, ``rate_limited``, ``delay``, ``die_after``,
  ``fail_midstream``, and ``reachable``); the statistics (every request recorded,
  counts per ``METHOD path``, errors, generations in flight and their maximum); the
  control endpoints under ``/_standin/``; the in-process transport; and the run of
  one generation (fault answers, the ``delay`` between deltas, a stream cut after
  ``die_after`` frames or ended by an in-stream error, a client that hangs up).
* :class:`ApiError`, the error answer each API shapes its own way.
* :class:`Reply`, one generation's answer, whole and as Server-Sent Events frames.
* Small helpers both replies use: :func:`random_id`, :func:`words`, :func:`cut`,
  :func:`sample_value`, :func:`json_text`.

A subclass gives the API's own parts: its request ids and their headers, its routes
(:meth:`CloudStandIn._route`), its rate-limit and overload errors and its in-stream
error. Nothing here is foreman's: the stand-ins are the oracles foreman is tested against.
"""

from __future__ import annotations

from .pieces import (
    FAULTS,
    Aborted,
    ApiError,
    Reply,
    Request,
    cut,
    json_text,
    random_id,
    sample_value,
    words,
)
from .standin import CloudStandIn

__all__ = [
    "FAULTS",
    "Aborted",
    "ApiError",
    "CloudStandIn",
    "Reply",
    "Request",
    "cut",
    "json_text",
    "random_id",
    "sample_value",
    "words",
]
