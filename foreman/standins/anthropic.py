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

import base64
import binascii
import collections
import json
import re
import secrets
import string
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx2
import trio

from .ollama import ASGIStreamTransport
from .ollama import serve as serve  # every stand-in is served the same way

__all__ = ["DEFAULT_MODELS", "AnthropicStandIn", "serve"]

#: The anthropic SDK (2.12) warns (``DeprecationWarning``) when it sends ``claude-sonnet-4-5``;
#: under ``filterwarnings = error`` drive the stand-in through the SDK with another model.
DEFAULT_MODELS = ("claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5", "claude-sonnet-4-5")
DEFAULT_REPLY = "Hello! This is the Claude stand-in, answering in a few short words."
SAMPLING_REMOVED = "2026-10-21"  # the first API version that rejects temperature/top_p/top_k
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # the SDK sends its own, e.g. 2026-10-21
MODEL_CREATED_AT = "2025-09-29T00:00:00Z"

FAULTS: dict[str, Any] = {
    "overloaded": 0,
    "rate_limited": 0,
    "delay": 0.0,
    "die_after": None,
    "fail_midstream": False,
}

_TOP_LEVEL = frozenset(
    "model messages max_tokens system temperature top_p top_k stop_sequences stream tools "
    "tool_choice metadata thinking service_tier container mcp_servers context_management "
    "output_config output_format inference_geo speed cache_control diagnostics".split()
)
_BLOCK_TYPES = (
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
)
_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_ALPHABET = string.ascii_letters + string.digits


class ApiError(Exception):
    """An error answer: HTTP ``status`` with Anthropic's ``{"type": "error", ...}`` body."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or {}


class _Aborted(Exception):
    """Raised to break the connection (the ``die_after`` fault)."""


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


def _random_id(prefix: str, length: int = 22) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _words(text: str) -> int:
    return len(text.split())


def _sniff(data: bytes) -> str | None:
    """The image media type ``data`` starts like, if one of the four the API takes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def display_name(model_id: str) -> str:
    """``claude-sonnet-4-5`` -> ``Claude Sonnet 4.5`` (a trailing date is dropped)."""
    parts = [p for p in model_id.split("-") if p != "claude" and not re.fullmatch(r"\d{8}", p)]
    words: list[str] = []
    for part in parts:
        if part.isdigit() and words and words[-1][-1].isdigit():
            words[-1] += "." + part
        else:
            words.append(part if part.isdigit() else part.capitalize())
    return " ".join(["Claude", *words])


# --- validation ---------------------------------------------------------------------------


def _check_number(body: dict[str, Any], name: str, low: float, high: float | None) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{name}: Input should be a valid number")
    if value < low:
        raise _invalid(f"{name}: Input should be greater than or equal to {low:g}")
    if high is not None and value > high:
        raise _invalid(f"{name}: Input should be less than or equal to {high:g}")


def _check_image(where: str, block: dict[str, Any]) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _invalid(f"{where}.source: Field required")
    if source.get("type") == "url":
        if not isinstance(source.get("url"), str):
            raise _invalid(f"{where}.source.url.url: Field required")
        return
    if source.get("type") != "base64":
        raise _invalid(
            f"{where}.source: Input tag '{source.get('type')}' found using 'type' does not "
            "match any of the expected tags: 'base64', 'url', 'file'"
        )
    media_type = source.get("media_type")
    if media_type not in _MEDIA_TYPES:
        raise _invalid(
            f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
            "'image/gif' or 'image/webp'"
        )
    data = source.get("data")
    if not isinstance(data, str):
        raise _invalid(f"{where}.source.base64.data: Field required")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{where}.source.base64.data: invalid base64 data") from None
    sniffed = _sniff(raw)
    if sniffed is None:
        raise _invalid(f"{where}.source.base64.data: Could not process image")
    if sniffed != media_type:
        raise _invalid(
            f"{where}.source.base64.data: Image does not match the provided media type {media_type}"
        )


def _check_blocks(where: str, blocks: list[Any], *, role: str) -> None:
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        if not isinstance(block, dict):
            raise _invalid(f"{at}: Input should be a valid dictionary")
        kind = block.get("type")
        if kind not in _BLOCK_TYPES:
            tags = ", ".join(f"'{t}'" for t in _BLOCK_TYPES)
            raise _invalid(
                f"{at}: Input tag '{kind}' found using 'type' does not match any of the "
                f"expected tags: {tags}"
            )
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise _invalid(f"{at}.text.text: Field required")
            if not block["text"]:
                raise _invalid("messages: text content blocks must be non-empty")
        elif kind == "image":
            _check_image(f"{at}.image", block)
        elif kind == "tool_use":
            if role != "assistant":
                raise _invalid(f"{at}: tool_use blocks are only allowed in assistant messages")
            for name, types in (("id", str), ("name", str), ("input", dict)):
                if not isinstance(block.get(name), types):
                    raise _invalid(f"{at}.tool_use.{name}: Field required")
        elif kind == "tool_result":
            if role != "user":
                raise _invalid(f"{at}: tool_result blocks are only allowed in user messages")
            if not isinstance(block.get("tool_use_id"), str):
                raise _invalid(f"{at}.tool_result.tool_use_id: Field required")
            content = block.get("content")
            if isinstance(content, list):
                _check_blocks(f"{at}.tool_result.content", content, role=role)
            elif content is not None and not isinstance(content, str):
                raise _invalid(f"{at}.tool_result.content: Input should be a valid list")


def _ids(content: Any, kind: str, key: str) -> list[str]:
    if not isinstance(content, list):
        return []
    return [b[key] for b in content if isinstance(b, dict) and b.get("type") == kind]


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise _invalid("messages: Field required")
    if not isinstance(messages, list):
        raise _invalid("messages: Input should be a valid list")
    if not messages:
        raise _invalid("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role == "system":
            raise _invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _invalid(f"messages.{i}.content: Field required")
        content = message["content"]
        final_assistant = i == len(messages) - 1 and role == "assistant"
        if isinstance(content, list):
            _check_blocks(f"messages.{i}.content", content, role=role)
        elif not isinstance(content, str):
            raise _invalid(f"messages.{i}.content: Input should be a valid list")
        if not content and not final_assistant:
            raise _invalid(
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
    for i, message in enumerate(messages):
        used = _ids(message["content"], "tool_use", "id")
        following = messages[i + 1]["content"] if i + 1 < len(messages) else None
        missing = [u for u in used if u not in _ids(following, "tool_result", "tool_use_id")]
        if missing:
            raise _invalid(
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have "
                "a corresponding `tool_result` block in the next message."
            )
        previous = messages[i - 1]["content"] if i > 0 else None
        offered = _ids(previous, "tool_use", "id")
        content = message["content"] if isinstance(message["content"], list) else []
        for j, block in enumerate(content):
            if isinstance(block, dict) and block.get("type") == "tool_result":
                if block["tool_use_id"] not in offered:
                    raise _invalid(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` "
                        "block must have a corresponding `tool_use` block in the previous "
                        "message."
                    )


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _invalid(f"tools.{i}: Input should be a valid dictionary")
            if tool.get("type") not in (None, "custom"):
                continue  # a server tool: accepted, never called
            name = tool.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise _invalid(
                    f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                )
            if not isinstance(tool.get("input_schema"), dict):
                raise _invalid(f"tools.{i}.custom.input_schema: Field required")
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _invalid(
            "tool_choice: Input tag found using 'type' does not match any of the expected "
            "tags: 'auto', 'any', 'tool', 'none'"
        )
    if not tools and choice["type"] != "none":
        raise _invalid("tool_choice: tool_choice may only be specified while providing tools")
    if choice["type"] == "tool" and choice.get("name") not in [t.get("name") for t in tools or []]:
        raise _invalid(f"tool_choice: Tool '{choice.get('name')}' not found in provided tools")


def validate(
    body: Any, *, version: str = SAMPLING_REMOVED, count_only: bool = False
) -> dict[str, Any]:
    """Check a Messages request as API ``version`` does; returns it or raises :class:`ApiError`."""
    if not isinstance(body, dict):
        raise _invalid("body: Input should be a valid dictionary")
    sampling = ("temperature", "top_p", "top_k") if version >= SAMPLING_REMOVED else ()
    for key in body:
        if key not in _TOP_LEVEL or key in sampling:
            raise _invalid(f"{key}: Extra inputs are not permitted")
    if "model" not in body:
        raise _invalid("model: Field required")
    if not isinstance(body["model"], str):
        raise _invalid("model: Input should be a valid string")
    if not count_only:
        if "max_tokens" not in body:
            raise _invalid("max_tokens: Field required")
        max_tokens = body["max_tokens"]
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise _invalid("max_tokens: Input should be a valid integer")
        if max_tokens < 1:
            raise _invalid("max_tokens: Input should be greater than or equal to 1")
    _check_messages(body.get("messages"))
    system = body.get("system")
    if isinstance(system, list):
        _check_blocks("system", system, role="system")
        if any(b.get("type") != "text" for b in system):
            raise _invalid("system: Input should be a valid string or a list of text blocks")
    elif system is not None and not isinstance(system, str):
        raise _invalid("system: Input should be a valid string")
    _check_number(body, "temperature", 0, 1)
    _check_number(body, "top_p", 0, 1)
    _check_number(body, "top_k", 0, None)
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _invalid("stop_sequences: Input should be a valid list of strings")
        if any(not s.strip() for s in stops):
            raise _invalid("stop_sequences: each stop sequence must contain non-whitespace")
    if not isinstance(body.get("stream", False), bool):
        raise _invalid("stream: Input should be a valid boolean")
    _check_tools(body)
    return body


# --- the reply ----------------------------------------------------------------------------


def _texts(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
        return
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            yield block.get("text", "")
        elif block.get("type") == "tool_use":
            yield json.dumps(block.get("input"))
        elif block.get("type") == "tool_result":
            yield from _texts(block.get("content"))


def input_tokens(body: dict[str, Any]) -> int:
    """Words of the system text and of every text in the messages, plus 1 per image."""
    count = sum(_words(t) for t in _texts(body.get("system")))
    for message in body["messages"]:
        count += sum(_words(t) for t in _texts(message["content"]))
        blocks = message["content"] if isinstance(message["content"], list) else []
        for block in blocks:
            inner = block.get("content") if block.get("type") == "tool_result" else None
            nested = inner if isinstance(inner, list) else []
            count += sum(1 for b in [block, *nested] if b.get("type") == "image")
    return count


def sample_input(schema: Any) -> Any:
    """A small value that fits a JSON schema (see the module docstring)."""
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        names = schema.get("required") or list(properties)
        return {name: sample_input(properties.get(name)) for name in names}
    return {"string": "Paris", "integer": 1, "number": 1, "boolean": True, "array": []}.get(
        kind if isinstance(kind, str) else "", None
    )


@dataclass
class Block:
    """One content block of a reply and the deltas that stream it."""

    type: str  # "text" or "tool_use"
    pieces: list[str]
    id: str = ""
    name: str = ""
    input: Any = None

    def content(self) -> dict[str, Any]:
        if self.type == "text":
            return {"type": "text", "text": "".join(self.pieces)}
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": self.input}


@dataclass
class Plan:
    """The whole reply to one request, before it is rendered as a Message or a stream."""

    blocks: list[Block]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int


def cut(pieces: list[str], length: int) -> list[str]:
    """The leading ``pieces`` that spell the first ``length`` characters, without empty ones."""
    out = []
    for piece in pieces:
        if length <= 0:
            break
        out.append(piece[:length])
        length -= len(piece)
    return [p for p in out if p]


def _text(reply: str, max_tokens: int, stops: list[str]) -> tuple[list[str], int, str, str | None]:
    """The text deltas, the words generated, the stop reason and the stop sequence hit."""
    out: list[str] = []
    for piece in re.findall(r"\s*\S+", reply) or [reply]:
        if len(out) == max_tokens:
            return out, len(out), "max_tokens", None
        out.append(piece)
        text = "".join(out)
        hits = [(text.find(s), s) for s in stops if s in text]
        if hits:
            at, stop = min(hits)
            return cut(out, at), len(out), "stop_sequence", stop
    return out, len(out), "end_turn", None


def _tool_to_call(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t for t in body.get("tools") or [] if t.get("type") in (None, "custom")]
    choice = (body.get("tool_choice") or {}).get("type", "auto")
    if not tools or choice == "none":
        return None
    if choice == "tool":
        return next(t for t in tools if t["name"] == body["tool_choice"]["name"])
    if choice == "any":
        return tools[0]
    last = body["messages"][-1]
    said = " ".join(_texts(last["content"])) if last["role"] == "user" else ""
    return tools[0] if "weather" in said.lower() else None


def plan(body: dict[str, Any], reply: str, tool_preamble: str) -> Plan:
    """What to answer to a validated request (see the module docstring)."""
    tokens = input_tokens(body)
    tool = _tool_to_call(body)
    if tool is None:
        pieces, generated, stop_reason, stop = _text(
            reply, body["max_tokens"], body.get("stop_sequences") or []
        )
        blocks = [Block("text", pieces)] if pieces else []
        return Plan(blocks, stop_reason, stop, tokens, generated)
    blocks = []
    if tool_preamble:
        blocks.append(Block("text", re.findall(r"\s*\S+", tool_preamble)))
    arguments = sample_input(tool["input_schema"])
    text = json.dumps(arguments)
    blocks.append(
        Block(
            "tool_use",
            [text[i : i + 6] for i in range(0, len(text), 6)],
            id=_random_id("toolu_01"),
            name=tool["name"],
            input=arguments,
        )
    )
    return Plan(blocks, "tool_use", None, tokens, sum(len(b.pieces) for b in blocks))


def _usage(input_count: int, output_count: int) -> dict[str, Any]:
    return {
        "input_tokens": input_count,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_count,
    }


def message(plan: Plan, model: str, message_id: str) -> dict[str, Any]:
    """The non-streamed Message object."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [b.content() for b in plan.blocks],
        "stop_reason": plan.stop_reason,
        "stop_sequence": plan.stop_sequence,
        "usage": _usage(plan.input_tokens, plan.output_tokens),
    }


def events(plan: Plan, model: str, message_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The stream's ``(event name, data)`` pairs, in the real API's order."""
    start = message(plan, model, message_id)
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = _usage(plan.input_tokens, 1)
    yield "message_start", {"type": "message_start", "message": start}
    for index, block in enumerate(plan.blocks):
        opening = block.content()
        if block.type == "text":
            opening["text"] = ""
        else:
            opening["input"] = {}
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opening},
        )
        if index == 0:
            yield "ping", {"type": "ping"}
        if block.type == "text":
            deltas = [{"type": "text_delta", "text": p} for p in block.pieces]
        else:
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *block.pieces]]
        for delta in deltas:
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    if not plan.blocks:
        yield "ping", {"type": "ping"}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": plan.stop_reason, "stop_sequence": plan.stop_sequence},
            "usage": {"output_tokens": plan.output_tokens},
        },
    )
    yield "message_stop", {"type": "message_stop"}


# --- the stand-in -------------------------------------------------------------------------


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class AnthropicStandIn:
    """A fake ``api.anthropic.com`` (see the module docstring for what it serves).

    Args:
        api_key: the one key accepted (as ``x-api-key`` or ``Authorization: Bearer``).
        models: the model ids it knows, newest first, as ``GET /v1/models`` lists them.
        reply: the text of every text reply, streamed one word per delta.
        tool_preamble: text sent before a ``tool_use`` block ("" for none).

    Faults (set them as attributes, or over ``POST /_standin/faults``):
        overloaded, rate_limited, delay, die_after, fail_midstream (see the module
        docstring); and ``reachable``: False makes :meth:`transport` refuse
        connections (``httpx2.ConnectError``), as a host that is down does.

    Statistics (``/_standin/`` requests are not counted):
        requests: every request, in order, as a dict of ``method``, ``path``,
            ``query``, ``headers`` (lower-cased names) and ``body`` (the parsed JSON,
            or None if the body is empty or not JSON).
        counts: ``"POST /v1/messages"`` -> number of requests.
        errors: error type (``"overloaded_error"``...) -> number of error answers,
            in-stream errors included.
        in_flight, max_in_flight, generations_total: ``POST /v1/messages`` requests
            past authentication, each counted until its response ended or its
            client went away.
        streams_total: those that asked for a stream.
    """

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        models: list[str] | tuple[str, ...] = DEFAULT_MODELS,
        reply: str = DEFAULT_REPLY,
        tool_preamble: str = "",
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self.reply = reply
        self.tool_preamble = tool_preamble
        self.reachable = True
        self.overloaded: int = 0
        self.rate_limited: int = 0
        self.delay: float = 0.0
        self.die_after: int | None = None
        self.fail_midstream: bool = False
        self.requests: list[dict[str, Any]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.in_flight = self.max_in_flight = self.generations_total = self.streams_total = 0

    # --- knobs and statistics -------------------------------------------------------------

    @property
    def last_body(self) -> Any:
        """The parsed JSON body of the most recent request."""
        return self.requests[-1]["body"]

    def transport(self, nursery: trio.Nursery) -> httpx2.AsyncBaseTransport:
        """An in-process httpx2 transport to :attr:`app`, refusing connections while
        :attr:`reachable` is False. ``nursery`` runs the requests; it must outlive them."""
        return ASGIStreamTransport(self.app, nursery, reachable=lambda: self.reachable)

    def faults(self) -> dict[str, Any]:
        """The current faults, by name."""
        return {name: getattr(self, name) for name in FAULTS}

    def set_faults(self, faults: Any) -> None:
        """Replace every fault: named ones from ``faults``, the rest back to defaults.

        Raises:
            ValueError: ``faults`` is not an object of known names with fitting values.
        """
        if not isinstance(faults, dict):
            raise ValueError("faults must be a JSON object")
        for name, value in faults.items():
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}")
            number = isinstance(value, int | float) and not isinstance(value, bool)
            ok = {
                "overloaded": isinstance(value, int) and number and value >= 0,
                "rate_limited": isinstance(value, int) and number and value >= 0,
                "delay": number and value >= 0,
                "die_after": value is None or (isinstance(value, int) and number and value >= 0),
                "fail_midstream": isinstance(value, bool),
            }[name]
            if not ok:
                raise ValueError(f"bad value for {name}: {value!r}")
        for name, default in FAULTS.items():
            setattr(self, name, faults.get(name, default))

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot of the statistics and faults."""
        return {
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "generations_total": self.generations_total,
            "streams_total": self.streams_total,
            "counts": dict(self.counts),
            "errors": dict(self.errors),
            "faults": self.faults(),
            "requests": self.requests,
        }

    def reset(self) -> None:
        """Clear the faults and the statistics (the maximum restarts from what is in flight)."""
        self.set_faults({})
        self.requests = []
        self.counts.clear()
        self.errors.clear()
        self.generations_total = self.streams_total = 0
        self.max_in_flight = self.in_flight

    # --- ASGI -----------------------------------------------------------------------------

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI 3 application."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = await _read_body(receive)
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if path.startswith("/_standin/"):
            await self._control(send, method, path, body)
            return
        request_id = _random_id("req_011", 21)
        query = scope.get("query_string", b"").decode("latin-1")
        self.requests.append(
            {"method": method, "path": path, "query": query, "headers": headers, "body": body}
        )
        self.counts[f"{method} {path}"] += 1
        try:
            self._authenticate(headers)
            version = headers.get("anthropic-version", "")
            if not version:
                raise _invalid("anthropic-version: header is required")
            if not _API_VERSION.match(version):
                raise _invalid(f"anthropic-version: unknown version {version}")
            if raw and body is None:
                raise _invalid("There was an error parsing the body of your request")
            if path == "/v1/messages" and method == "POST":
                await self._messages(send, receive, body, version, request_id)
            elif path == "/v1/messages/count_tokens" and method == "POST":
                validate(body, version=version, count_only=True)
                self._model(body["model"])
                answer = {"input_tokens": input_tokens(body)}
                await _send(send, 200, answer, request_id)
            elif path == "/v1/models" and method == "GET":
                await _send(send, 200, self._list_models(query), request_id)
            elif path.startswith("/v1/models/") and method == "GET":
                model = self._model(path.removeprefix("/v1/models/"))
                await _send(send, 200, model, request_id)
            else:
                raise ApiError(404, "not_found_error", "Not Found")
        except ApiError as error:
            self.errors[error.kind] += 1
            answer = {
                "type": "error",
                "error": {"type": error.kind, "message": error.message},
                "request_id": request_id,
            }
            await _send(send, error.status, answer, request_id, error.headers)

    def _authenticate(self, headers: dict[str, str]) -> None:
        key = headers.get("x-api-key")
        if key is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            key = token if scheme.lower() == "bearer" else None
        if key is None:
            raise ApiError(401, "authentication_error", "x-api-key header is required")
        if key != self.api_key:
            raise ApiError(401, "authentication_error", "invalid x-api-key")

    def _model(self, model_id: str) -> dict[str, Any]:
        if model_id not in self.models:
            raise ApiError(404, "not_found_error", f"model: {model_id}")
        return {
            "type": "model",
            "id": model_id,
            "display_name": display_name(model_id),
            "created_at": MODEL_CREATED_AT,
        }

    def _list_models(self, query: str) -> dict[str, Any]:
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        ids = self.models
        if params.get("after_id") in ids:
            ids = ids[ids.index(params["after_id"]) + 1 :]
        if params.get("before_id") in ids:
            ids = ids[: ids.index(params["before_id"])]
        try:
            limit = int(params.get("limit", "20"))
        except ValueError:
            raise _invalid("limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise _invalid("limit: Input should be between 1 and 1000")
        page = [self._model(i) for i in ids[:limit]]
        return {
            "data": page,
            "has_more": len(ids) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }

    async def _messages(
        self, send: Any, receive: Any, body: Any, version: str, request_id: str
    ) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.generations_total += 1
        try:
            validate(body, version=version)
            model = body["model"]
            self._model(model)
            if body.get("stream"):
                self.streams_total += 1
            if self.rate_limited > 0:
                self.rate_limited -= 1
                raise ApiError(
                    429,
                    "rate_limit_error",
                    "This request would exceed the rate limit for your organization of "
                    "50 requests per minute. Please try again later.",
                    {"retry-after": "1"},
                )
            if self.overloaded > 0:
                self.overloaded -= 1
                raise ApiError(529, "overloaded_error", "Overloaded")
            answer = plan(body, self.reply, self.tool_preamble)
            message_id = _random_id("msg_01")
            if body.get("stream"):
                await self._stream(send, receive, answer, model, message_id, request_id)
                return
            pause = partial(trio.sleep, self.delay * sum(len(b.pieces) for b in answer.blocks))
            if not await _unless_disconnected(receive, pause):
                return
            if self.die_after is not None:
                raise _Aborted("stand-in fault: connection aborted before the response")
            await _send(send, 200, message(answer, model, message_id), request_id)
        finally:
            self.in_flight -= 1

    async def _stream(
        self, send: Any, receive: Any, answer: Plan, model: str, message_id: str, request_id: str
    ) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"request-id", request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        died = False

        async def write() -> None:
            nonlocal died
            for sent, (name, data) in enumerate(events(answer, model, message_id)):
                if name == "content_block_delta":
                    await trio.sleep(self.delay)
                if self.die_after is not None and sent >= self.die_after:
                    died = True
                    return
                await _send_event(send, name, data)
                if self.fail_midstream and name == "content_block_delta":
                    self.errors["overloaded_error"] += 1
                    error = {"type": "overloaded_error", "message": "Overloaded"}
                    await _send_event(send, "error", {"type": "error", "error": error})
                    return

        if not await _unless_disconnected(receive, write):
            return
        if died:
            raise _Aborted("stand-in fault: connection aborted mid-stream")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _control(self, send: Any, method: str, path: str, body: Any) -> None:
        if (method, path) == ("POST", "/_standin/faults"):
            try:
                self.set_faults(body)
            except ValueError as exc:
                await _send(send, 400, {"error": str(exc)}, "")
                return
        elif (method, path) == ("POST", "/_standin/reset"):
            self.reset()
        elif (method, path) != ("GET", "/_standin/stats"):
            await _send(send, 404, {"error": "not found"}, "")
            return
        await _send(send, 200, self.stats(), "")


# --- ASGI helpers -------------------------------------------------------------------------


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        event = await receive()
        if event["type"] != "http.request":
            break
        chunks.append(event.get("body", b""))
        if not event.get("more_body", False):
            break
    return b"".join(chunks)


async def _unless_disconnected(receive: Any, work: Callable[[], Awaitable[None]]) -> bool:
    """Run ``work`` unless the client hangs up first; returns False if it did.

    Raw ASGI apps are not cancelled on a disconnect (hypercorn drops later sends),
    so this is how a generation stops, and leaves ``in_flight``, when its client goes.
    """
    gone = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await work()
        nursery.cancel_scope.cancel()
    return not gone


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send(
    send: Any, status: int, body: Any, request_id: str, extra: dict[str, str] | None = None
) -> None:
    payload = _json_bytes(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if request_id:
        headers.append((b"request-id", request_id.encode()))
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _send_event(send: Any, name: str, data: dict[str, Any]) -> None:
    chunk = f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
    await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
