"""A stand-in for OpenAI's Chat Completions API: a test oracle for foreman's OpenAI translator.

:class:`OpenAIStandIn` answers the official ``openai`` SDK (pointed at it with
``base_url``) the way ``api.openai.com/v1`` does, closely enough that a translator
tested against it works against the real service (and against the OpenAI-compatible
servers that copy it). It shares no code with what it tests. Use it in-process
through :meth:`OpenAIStandIn.transport` (no sockets, fine under trio's ``MockClock``)
or on a socket through :func:`serve`. Paths are served both with and without the
``/v1`` prefix, so ``base_url`` may be ``http://host`` or ``http://host/v1``.

What it mirrors of the real API:

* ``POST /v1/chat/completions``, streamed or not. A ``chat.completion`` has
  ``choices[0].message`` (``role``, ``content``, ``refusal``, ``annotations``,
  and ``tool_calls`` when a tool is called), ``finish_reason`` (``stop``,
  ``length``, ``tool_calls``) and ``usage``. A stream is ``data: {chunk}`` lines:
  first ``delta: {"role": "assistant", "content": ""}``, then one content delta
  per word, then a chunk with an empty delta and the ``finish_reason``, then, if
  ``stream_options.include_usage``, a chunk with no choices and the ``usage``
  (every earlier chunk then carries ``"usage": null``), then ``data: [DONE]``.
* Limits: ``max_completion_tokens`` (or the older ``max_tokens``) smaller than
  the reply cuts it with ``finish_reason: "length"``; a ``stop`` string (or one of
  up to 4) cuts the reply before it, with ``finish_reason: "stop"``.
* Tools: if the request has ``tools`` and the text of the last message, a user
  message, contains the word ``weather`` (any case), the reply calls the first
  tool: ``tool_calls`` with an id ``call_...`` and ``arguments``, a JSON string
  built from the tool's ``parameters`` (each required property, or every
  property if none is required: strings ``"Paris"`` or the first ``enum``
  value, numbers ``1``, booleans ``true``, arrays ``[]``, objects ``{}``), with
  ``content: null`` and ``finish_reason: "tool_calls"``. ``tool_choice`` works as
  in the real API: ``"required"`` always calls the first tool, ``{"type":
  "function", "function": {"name": N}}`` always calls N, ``"none"`` never calls
  one. A streamed call starts with the role, ``content: null`` and the call's
  index, id, type, name and empty arguments, then sends the arguments a few
  characters per chunk. ``tool_preamble``, if not empty, is content sent before
  the call. Limits do not cut a tool call.
* Validation with the real error texts, each a 400 ``invalid_request_error``
  (with ``param`` and ``code``): unrecognized arguments, ``model``, ``messages``
  (non-empty; roles system/developer/user/assistant/tool/function; content
  parts ``text``/``image_url``; images only in user messages; a data URL must
  hold a png, jpeg, gif or webp; ``tool_calls[].function.arguments`` must be a
  string; every ``tool`` message must answer a preceding ``tool_calls`` and every
  call must be answered), ``temperature`` (0..2), ``top_p`` (0..1), ``stop``
  (at most 4), ``max_tokens``/``max_completion_tokens`` (at least 1),
  ``stream_options`` (only with ``stream``), ``tools`` and ``tool_choice``.
* Authentication: ``Authorization: Bearer KEY``; otherwise 401 (``invalid_api_key``
  for a wrong key). Unknown model: 404 ``model_not_found``. Every response has an
  ``x-request-id`` header; errors are ``{"error": {"message", "type", "param",
  "code"}}``.
* ``GET /v1/models``, ``GET /v1/models/{id}`` and ``POST /v1/embeddings``
  (``input`` a string or a list of strings; ``encoding_format`` ``float`` or
  ``base64``; ``dimensions``; deterministic unit vectors, 8 numbers unless
  ``dimensions`` says otherwise). Models whose id contains ``embedding`` are
  embedding models: chat with one is a 404, as is embedding with a chat model.

Tokens are words: ``prompt_tokens`` counts the whitespace-separated words of every
message's text (string contents, text parts, tool call arguments), plus 1 per
image; tool definitions are not counted. ``completion_tokens`` counts the reply's
words generated (the word in which a stop sequence ends counts, though cut away)
and its argument pieces: the reply streams one word (with its leading space) per
chunk and tool arguments a few characters per chunk. For embeddings,
``prompt_tokens`` is the words of the inputs.

Faults (attributes, also set over HTTP; generation requests are ``POST
/v1/chat/completions``): ``overloaded`` (the next N answer 503 ``server_error``
"The engine is currently overloaded"), ``rate_limited`` (the next N answer 429
``rate_limit_exceeded`` with ``retry-after``), ``delay`` (seconds before every
delta; a non-streamed reply waits as long as its stream would), ``die_after`` (a
stream breaks after N ``data:`` lines without its final chunk, as a crashed
server's would; a non-streamed reply breaks before its status line in-process,
while hypercorn turns that into an empty 500), ``fail_midstream`` (after the first
delta the stream sends ``data: {"error": {...}}`` with a ``server_error``
and ends without ``[DONE]``, as the real API does when a generation fails).

Control endpoints (not OpenAI's, no key needed, not recorded): ``GET
/_standin/stats``, ``POST /_standin/faults`` (a JSON object of fault names; it
replaces all faults, unnamed ones go back to their defaults), ``POST
/_standin/reset`` (faults and statistics).

Left out: ``n`` other than 1 (ignored), logprobs, audio, ``response_format``
(accepted and ignored), the legacy ``functions``/``function_call`` answers,
refusals, more than one tool call per reply, the Responses, Completions,
Assistants and Files APIs, real tokenisation, resolving a model alias to a dated
id (``model`` echoes the request), organisation and project headers, and
rate-limit headers other than ``retry-after``.
"""

from __future__ import annotations

from ..ollama import serve as serve  # every stand-in is served the same way
from .standin import OpenAIStandIn
from .validation import DEFAULT_MODELS

__all__ = ["DEFAULT_MODELS", "OpenAIStandIn", "serve"]
