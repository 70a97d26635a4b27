"""A stand-in Ollama target for tests and demos.

:class:`StandIn` serves Ollama's native API (tags, ps, show, version, chat,
generate, embed, embeddings) from a handful of fake models, with Ollama's
status codes, error texts, key order and NDJSON streaming, a simplified
residency scheduler (``OLLAMA_MAX_LOADED_MODELS``, keep_alive, one slot per
model) and switchable faults. Use it in-process through
:meth:`StandIn.transport` (an :class:`ASGIStreamTransport`, fine under trio's
``MockClock``) or on a socket through :func:`serve`.

Control endpoints (not Ollama's): ``GET /_standin/stats``, ``POST /_standin/faults``
(JSON of :class:`Faults` fields, replaces the faults), ``POST /_standin/reset``.
"""

from ._models import DEFAULT_MODELS as DEFAULT_MODELS
from ._models import ModelSpec as ModelSpec
from ._serve import serve as serve
from ._standin import Faults as Faults
from ._standin import StandIn as StandIn
from ._transport import ASGIStreamTransport as ASGIStreamTransport
