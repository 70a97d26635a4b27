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

from .pieces import FAULTS as FAULTS
from .pieces import Aborted as Aborted
from .pieces import ApiError as ApiError
from .pieces import Reply as Reply
from .pieces import Request as Request
from .pieces import cut as cut
from .pieces import json_text as json_text
from .pieces import random_id as random_id
from .pieces import sample_value as sample_value
from .pieces import words as words
from .standin import CloudStandIn as CloudStandIn
