"""A stand-in for Anthropic's Messages API: a test oracle for foreman's Claude translator.

:class:`AnthropicStandIn` answers the official ``anthropic`` SDK (pointed at it with
``base_url``) the way ``api.anthropic.com`` does, closely enough that a translator
tested against it works against the real service. It shares no code with what it
tests. Use it in-process through :meth:`AnthropicStandIn.transport` (no sockets, fine
under trio's ``MockClock``) or on a socket through :func:`serve`.

What it mirrors of the real API:

* ``POST /v1/messages``, streamed (``"stream": true``) or not. The stream has the
  real event order: ``message_start``, then per content block
  ``content_block_start``, deltas (``text_delta`` or ``input_json_delta``) and
  ``content_block_stop``, a ``ping`` after the first block starts,
  ``message_delta`` (stop reason and output tokens) and ``message_stop``, each
  written as ``event: NAME`` / ``data: JSON`` / blank line.
* Stop reasons: ``end_turn``; ``max_tokens`` when ``max_tokens`` is smaller than
  the reply; ``stop_sequence`` (the reply is cut before the first stop sequence
  it contains, which is reported in ``stop_sequence``); ``tool_use``.
* Tools: if the request has ``tools`` and the text of the last message, a user
  message, contains the word ``weather`` (any case), the reply is a ``tool_use``
  block (id ``toolu_01...``) calling the first tool, with an input built from
  its ``input_schema`` (each required property, or every property if none is
  required: strings ``"Paris"`` or the first ``enum`` value, numbers ``1``,
  booleans ``true``, arrays ``[]``, objects ``{}``). ``tool_choice`` works as in
  the real API: ``{"type": "any"}`` always calls the first tool,
  ``{"type": "tool", "name": N}`` always calls N, ``{"type": "none"}`` never calls
  one. ``tool_preamble``, if not empty, is a text block sent before the
  ``tool_use`` block, as Claude often writes one. ``max_tokens`` and stop
  sequences do not cut a tool call.
* Validation with the real error texts, each a 400 ``invalid_request_error``:
  unknown top-level fields, ``model``, ``max_tokens`` (an integer, at least 1),
  ``messages`` (non-empty; roles ``user``/``assistant``, a ``system`` role gets
  the real hint about the top-level ``system`` parameter; non-empty content
  except a final assistant message; known block types), images (``base64``
  with one of the four media types, data that decodes and whose magic bytes
  match the media type, or a ``url`` source), tool pairing (every ``tool_use``
  answered by a ``tool_result`` in the next message, every ``tool_result``
  answering a ``tool_use`` of the previous one), ``system`` (a string or text
  blocks), ``stop_sequences``, ``tools`` (name pattern, ``input_schema``),
  ``tool_choice``; and the ``anthropic-version`` header (present, a
  ``YYYY-MM-DD`` date).
* The API version split on sampling parameters: with ``anthropic-version``
  ``2026-10-21`` or later (what the SDK 2.x sends) ``temperature``, ``top_p`` and
  ``top_k`` are rejected even at their defaults (``temperature: Extra inputs are
  not permitted``; the SDK no longer has them, ``extra_body`` still sends them);
  with an older version (``2023-06-01``) they are accepted, ``temperature`` and
  ``top_p`` in 0..1.
* Authentication: ``x-api-key: KEY`` or ``Authorization: Bearer KEY`` (the SDK
  sends the latter for ``api_key=``); otherwise 401 ``authentication_error``.
  Unknown model: 404 ``not_found_error`` (``model: NAME``). Every response has a
  ``request-id`` header; errors are ``{"type": "error", "error": {...},
  "request_id": ...}``.
* ``GET /v1/models`` (with ``limit``, ``after_id``, ``before_id``),
  ``GET /v1/models/{id}`` and ``POST /v1/messages/count_tokens``.

Tokens are words: ``input_tokens`` counts the whitespace-separated words of the
``system`` text and of every text in the messages (string contents, text blocks,
``tool_result`` texts, ``tool_use`` inputs as JSON), plus 1 per image; tool
definitions are not counted. ``output_tokens`` counts the reply's words
generated (the word in which a stop sequence ends counts, though cut away) and its
``input_json_delta`` pieces: the reply streams one word (with its leading space)
per ``text_delta`` and a few characters per ``input_json_delta``.
``message_start`` reports ``output_tokens: 1``, as the real API does.

Faults (attributes, also set over HTTP; generation requests are ``POST
/v1/messages``): ``overloaded`` (the next N answer 529 ``overloaded_error``),
``rate_limited`` (the next N answer 429 ``rate_limit_error`` with
``retry-after``), ``delay`` (seconds before every delta; a non-streamed reply
waits as long as its stream would), ``die_after`` (a stream breaks after N events
without its final chunk, as a crashed server's would; a non-streamed reply breaks
before its status line in-process, while hypercorn turns that into an empty 500),
``fail_midstream`` (after the first delta the stream sends ``event: error`` with
``overloaded_error`` and ends, as the real API does under load).

Control endpoints (not Anthropic's, no key needed, not recorded): ``GET
/_standin/stats``, ``POST /_standin/faults`` (a JSON object of fault names; it
replaces all faults, unnamed ones go back to their defaults), ``POST
/_standin/reset`` (faults and statistics).

Left out: the other request changes of API version ``2026-10-21`` (document
blocks in assistant messages, citations on user text blocks), models that reject
sampling parameters under every version, prompt caching, extended thinking,
citations, documents and PDFs, server tools (web search, code execution),
batches, files, the beta endpoints, ``metadata`` and ``service_tier`` semantics
(accepted and ignored), real tokenisation, more than one tool call per reply,
model aliases (a model is known only by the exact ids in ``models``) and
rate-limit headers other than ``retry-after``.
"""

from __future__ import annotations

from ..ollama import serve as serve  # every stand-in is served the same way
from .standin import AnthropicStandIn
from .validation import DEFAULT_MODELS

__all__ = ["DEFAULT_MODELS", "AnthropicStandIn", "serve"]
