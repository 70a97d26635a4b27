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

import base64
import binascii
import collections
import hashlib
import json
import math
import re
import secrets
import string
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx2
import trio

from .ollama import ASGIStreamTransport
from .ollama import serve as serve  # every stand-in is served the same way

__all__ = ["DEFAULT_MODELS", "OpenAIStandIn", "serve"]

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small")
DEFAULT_REPLY = "Hello! This is the OpenAI stand-in, answering in a few short words."
MODEL_CREATED = 1721172741
SYSTEM_FINGERPRINT = "fp_standin01"

FAULTS: dict[str, Any] = {
    "overloaded": 0,
    "rate_limited": 0,
    "delay": 0.0,
    "die_after": None,
    "fail_midstream": False,
}

_ARGUMENTS = frozenset(
    "model messages audio frequency_penalty function_call functions logit_bias logprobs "
    "max_completion_tokens max_tokens metadata modalities n parallel_tool_calls prediction "
    "presence_penalty prompt_cache_key prompt_cache_retention reasoning_effort "
    "response_format safety_identifier seed service_tier stop store stream stream_options "
    "temperature tool_choice tools top_logprobs top_p user verbosity web_search_options".split()
)
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_PART_TYPES = ("text", "image_url", "input_audio", "refusal", "audio", "file")
_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,(.*)$", re.DOTALL)
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ALPHABET = string.ascii_letters + string.digits


class ApiError(Exception):
    """An error answer: HTTP ``status`` with OpenAI's ``{"error": {...}}`` body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


class _Aborted(Exception):
    """Raised to break the connection (the ``die_after`` fault)."""


def _invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _random_id(prefix: str, length: int) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _words(text: str) -> int:
    return len(text.split())


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), "value")


def _wrong_type(param: str, expected: str, value: Any) -> ApiError:
    return _invalid(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param,
        "invalid_type",
    )


def _missing(param: str) -> ApiError:
    return _invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _is_image(data: bytes) -> bool:
    return (
        data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a"))
        or data[:4] == b"RIFF"
        and data[8:12] == b"WEBP"
    )


# --- validation ---------------------------------------------------------------------------


def _check_range(body: dict[str, Any], name: str, low: float, high: float | None) -> None:
    value = body.get(name)
    if value is None:
        return
    integer = name in ("max_tokens", "max_completion_tokens")
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise _wrong_type(name, "an integer" if integer else "a decimal", value)
    kind = "integer" if integer else "decimal"
    if value < low:
        raise _invalid(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {low:g}, but "
            f"got {value} instead.",
            name,
            f"{kind}_below_min_value",
        )
    if high is not None and value > high:
        raise _invalid(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {high:g}, but "
            f"got {value} instead.",
            name,
            f"{kind}_above_max_value",
        )


def _check_image_url(where: str, part: dict[str, Any], role: str) -> None:
    if role != "user":
        raise _invalid(
            f"Image URLs are only allowed for messages with role 'user', but this message "
            f"with role '{role}' contains an image URL.",
            where,
            "invalid_value",
        )
    image = part.get("image_url")
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        raise _missing(f"{where}.image_url.url")
    url = image["url"]
    if url.startswith(("http://", "https://")):
        return
    match = _DATA_URL.match(url)
    if match is None:
        raise _invalid(
            f"Invalid '{where}.image_url.url'. Expected a base64-encoded data URL with an "
            "image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got an "
            "invalid value.",
            f"{where}.image_url.url",
            "invalid_value",
        )
    try:
        data = base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not _is_image(data):
        raise _invalid(
            "You uploaded an unsupported image. Please make sure your image has of one the "
            "following formats: ['png', 'jpeg', 'gif', 'webp'].",
            None,
            "invalid_image_format",
        )


def _check_content(where: str, message: dict[str, Any], role: str) -> None:
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        raise _missing(f"{where}.content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _wrong_type(f"{where}.content", "one of a string or array of objects", content)
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise _wrong_type(at, "an object", part)
        kind = part.get("type")
        if kind not in _PART_TYPES:
            supported = ", ".join(f"'{t}'" for t in _PART_TYPES[:-1])
            raise _invalid(
                f"Invalid value: '{kind}'. Supported values are: {supported}, and "
                f"'{_PART_TYPES[-1]}'.",
                f"{at}.type",
                "invalid_value",
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _missing(f"{at}.text")
        if kind == "image_url":
            _check_image_url(at, part, role)


def _check_tool_calls(where: str, calls: Any) -> list[str]:
    if not isinstance(calls, list):
        raise _wrong_type(f"{where}.tool_calls", "an array", calls)
    ids = []
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        if not isinstance(call, dict):
            raise _wrong_type(at, "an object", call)
        for name in ("id", "type", "function"):
            if name not in call:
                raise _missing(f"{at}.{name}")
        function = call["function"]
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _missing(f"{at}.function.name")
        if "arguments" not in function:
            raise _missing(f"{at}.function.arguments")
        if not isinstance(function["arguments"], str):
            raise _wrong_type(f"{at}.function.arguments", "a string", function["arguments"])
        ids.append(call["id"])
    return ids


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array", messages)
    if not messages:
        raise _invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead.",
            "messages",
            "empty_array",
        )
    pending: list[str] = []  # tool_call ids still waiting for their tool message
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if role not in _ROLES:
            supported = ", ".join(f"'{r}'" for r in _ROLES[:-1])
            raise _invalid(
                f"Invalid value: '{role}'. Supported values are: {supported}, and '{_ROLES[-1]}'.",
                f"{where}.role",
                "invalid_value",
            )
        if pending and role != "tool":
            raise _invalid(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)}",
                f"messages.[{i}].role",
            )
        _check_content(where, message, role)
        if role == "tool":
            if "tool_call_id" not in message:
                raise _missing(f"{where}.tool_call_id")
            if message["tool_call_id"] not in pending:
                raise _invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            pending.remove(message["tool_call_id"])
        elif role == "assistant" and message.get("tool_calls") is not None:
            pending = _check_tool_calls(where, message["tool_calls"])
    if pending:
        raise _invalid(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(pending)}",
            f"messages.[{len(messages)}].role",
        )


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _wrong_type("tools", "an array", tools)
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _wrong_type(f"tools[{i}]", "an object", tool)
            if tool.get("type") != "function":
                raise _invalid(
                    f"Invalid value: '{tool.get('type')}'. Supported values are: 'function' "
                    "and 'custom'.",
                    f"tools[{i}].type",
                    "invalid_value",
                )
            function = tool.get("function")
            if not isinstance(function, dict) or "name" not in function:
                raise _missing(f"tools[{i}].function.name")
            if not isinstance(function["name"], str) or not _TOOL_NAME.match(function["name"]):
                raise _invalid(
                    f"Invalid 'tools[{i}].function.name': string does not match pattern. "
                    "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                    f"tools[{i}].function.name",
                    "invalid_value",
                )
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not tools:
        raise _invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            "tool_choice",
        )
    names = [t["function"]["name"] for t in tools]
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") != "function" or name not in names:
            raise _invalid(
                f"Invalid value for 'tool_choice': tool '{name}' is not among the tools.",
                "tool_choice",
            )
    elif choice not in ("none", "auto", "required"):
        raise _invalid(
            f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
            "tool_choice",
            "invalid_value",
        )


def validate(body: Any) -> dict[str, Any]:
    """Check a chat completion request as the API does; returns it or raises :class:`ApiError`."""
    if not isinstance(body, dict):
        raise _invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON. If you have trouble figuring out how to "
            "fix this, please contact us through our help center at help.openai.com.)"
        )
    for key in body:
        if key not in _ARGUMENTS:
            raise _invalid(f"Unrecognized request argument supplied: {key}")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _invalid("you must provide a model parameter")
    _check_messages(body.get("messages"))
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1)
    _check_range(body, "max_tokens", 1, None)
    _check_range(body, "max_completion_tokens", 1, None)
    stop = body.get("stop")
    if isinstance(stop, list):
        if len(stop) > 4:
            raise _invalid(
                "Invalid 'stop': array too long. Expected an array with maximum length 4, but "
                f"got an array with length {len(stop)} instead.",
                "stop",
                "array_above_max_length",
            )
        if not all(isinstance(s, str) for s in stop):
            raise _wrong_type("stop", "a string", next(s for s in stop if not isinstance(s, str)))
    elif stop is not None and not isinstance(stop, str):
        raise _wrong_type("stop", "one of a string or array of strings", stop)
    if body.get("stream_options") is not None and not body.get("stream"):
        raise _invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    _check_tools(body)
    return body


# --- the reply ----------------------------------------------------------------------------


def _texts(message: dict[str, Any]) -> Iterator[str]:
    content = message.get("content")
    if isinstance(content, str):
        yield content
    for part in content if isinstance(content, list) else []:
        if part.get("type") == "text":
            yield part["text"]
    for call in message.get("tool_calls") or []:
        yield call["function"]["arguments"]


def prompt_tokens(body: dict[str, Any]) -> int:
    """Words of every message's text, plus 1 per image part."""
    count = 0
    for message in body["messages"]:
        count += sum(_words(t) for t in _texts(message))
        parts = message["content"] if isinstance(message.get("content"), list) else []
        count += sum(1 for p in parts if p.get("type") == "image_url")
    return count


def sample_arguments(schema: Any) -> Any:
    """A small value that fits a JSON schema (see the module docstring)."""
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        names = schema.get("required") or list(properties)
        return {name: sample_arguments(properties.get(name)) for name in names}
    return {"string": "Paris", "integer": 1, "number": 1, "boolean": True, "array": []}.get(
        kind if isinstance(kind, str) else "", None
    )


@dataclass
class Plan:
    """The whole reply to one request, before it is rendered as a completion or a stream."""

    content: list[str]  # content deltas
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    call_id: str = ""
    call_name: str = ""
    arguments: list[str] | None = None  # argument deltas of the one tool call, if any

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


def cut(pieces: list[str], length: int) -> list[str]:
    """The leading ``pieces`` that spell the first ``length`` characters, without empty ones."""
    out = []
    for piece in pieces:
        if length <= 0:
            break
        out.append(piece[:length])
        length -= len(piece)
    return [p for p in out if p]


def _tool_to_call(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t["function"] for t in body.get("tools") or []]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        return next(t for t in tools if t["name"] == choice["function"]["name"])
    if choice == "required":
        return tools[0]
    last = body["messages"][-1]
    said = " ".join(_texts(last)) if last["role"] == "user" else ""
    return tools[0] if "weather" in said.lower() else None


def plan(body: dict[str, Any], reply: str, tool_preamble: str) -> Plan:
    """What to answer to a validated request (see the module docstring)."""
    tokens = prompt_tokens(body)
    tool = _tool_to_call(body)
    if tool is not None:
        text = json.dumps(sample_arguments(tool.get("parameters")), separators=(",", ":"))
        preamble = re.findall(r"\s*\S+", tool_preamble)
        arguments = [text[i : i + 6] for i in range(0, len(text), 6)]
        return Plan(
            preamble,
            "tool_calls",
            tokens,
            len(preamble) + len(arguments),
            call_id=_random_id("call_", 24),
            call_name=tool["name"],
            arguments=arguments,
        )
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or math.inf
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    out: list[str] = []
    for piece in re.findall(r"\s*\S+", reply) or [reply]:
        if len(out) == limit:
            return Plan(out, "length", tokens, len(out))
        out.append(piece)
        text = "".join(out)
        hits = [text.find(s) for s in stops if s and s in text]
        if hits:
            return Plan(cut(out, min(hits)), "stop", tokens, len(out))
    return Plan(out, "stop", tokens, len(out))


def _tool_call(plan: Plan) -> dict[str, Any]:
    return {
        "id": plan.call_id,
        "type": "function",
        "function": {"name": plan.call_name, "arguments": "".join(plan.arguments or [])},
    }


def completion(plan: Plan, model: str, completion_id: str, created: int) -> dict[str, Any]:
    """The non-streamed ``chat.completion`` object."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(plan.content) or (None if plan.arguments is not None else ""),
        "refusal": None,
        "annotations": [],
    }
    if plan.arguments is not None:
        message["tool_calls"] = [_tool_call(plan)]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
        ],
        "usage": plan.usage(),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def chunks(
    plan: Plan, model: str, completion_id: str, created: int, *, include_usage: bool
) -> Iterator[tuple[bool, dict[str, Any]]]:
    """The stream's chunks, each with whether it is a delta (the ``delay`` applies)."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            out["usage"] = None
        return out

    if plan.content or plan.arguments is None:
        yield False, chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in plan.content:
            yield True, chunk({"content": piece})
    if plan.arguments is not None:
        head = {"index": 0, **_tool_call(plan)}
        head["function"] = {"name": plan.call_name, "arguments": ""}
        opening: dict[str, Any] = {"tool_calls": [head]}
        if not plan.content:
            opening = {"role": "assistant", "content": None, **opening, "refusal": None}
        yield False, chunk(opening)
        for piece in plan.arguments:
            yield True, chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield False, chunk({}, plan.finish_reason)
    if include_usage:
        last = chunk({})
        last.update(choices=[], usage=plan.usage())
        yield False, last


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = [(seed[i % len(seed)] - 127.5) / 127.5 + i * 1e-3 for i in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


# --- the stand-in -------------------------------------------------------------------------


def _mask(key: str) -> str:
    return key if len(key) <= 8 else key[:3] + "*" * (len(key) - 7) + key[-4:]


class OpenAIStandIn:
    """A fake ``api.openai.com`` (see the module docstring for what it serves).

    Args:
        api_key: the one key accepted (as ``Authorization: Bearer``).
        models: the model ids it knows, as ``GET /v1/models`` lists them; those
            containing ``embedding`` are embedding models.
        reply: the content of every text reply, streamed one word per delta.
        tool_preamble: content sent before a tool call ("" for none, as usual).

    Faults (set them as attributes, or over ``POST /_standin/faults``):
        overloaded, rate_limited, delay, die_after, fail_midstream (see the module
        docstring); and ``reachable``: False makes :meth:`transport` refuse
        connections (``httpx2.ConnectError``), as a host that is down does.

    Statistics (``/_standin/`` requests are not counted):
        requests: every request, in order, as a dict of ``method``, ``path``,
            ``query``, ``headers`` (lower-cased names) and ``body`` (the parsed JSON,
            or None if the body is empty or not JSON).
        counts: ``"POST /v1/chat/completions"`` -> number of requests.
        errors: error code or type (``"rate_limit_exceeded"``, ``"server_error"``...)
            -> number of error answers, in-stream errors included.
        in_flight, max_in_flight, generations_total: ``POST /v1/chat/completions``
            requests past authentication, each counted until its response ended or its
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
        request_id = "req_" + secrets.token_hex(16)
        query = scope.get("query_string", b"").decode("latin-1")
        self.requests.append(
            {"method": method, "path": path, "query": query, "headers": headers, "body": body}
        )
        self.counts[f"{method} {path}"] += 1
        route = path.removeprefix("/v1")
        try:
            self._authenticate(headers)
            if route == "/chat/completions" and method == "POST":
                await self._chat(send, receive, body, request_id)
            elif route == "/embeddings" and method == "POST":
                await _send(send, 200, self._embeddings(body), request_id)
            elif route == "/models" and method == "GET":
                listing = {"object": "list", "data": [self._model(m) for m in self.models]}
                await _send(send, 200, listing, request_id)
            elif route.startswith("/models/") and method == "GET":
                await _send(send, 200, self._model(route.removeprefix("/models/")), request_id)
            elif route in ("/chat/completions", "/embeddings", "/models"):
                raise ApiError(405, f"Invalid method for URL ({method} {path})")
            else:
                raise ApiError(404, f"Invalid URL ({method} {path})")
        except ApiError as error:
            self.errors[error.code or error.kind] += 1
            await _send(send, error.status, error.body(), request_id, error.headers)

    def _authenticate(self, headers: dict[str, str]) -> None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username. You can obtain an API key "
                "from https://platform.openai.com/account/api-keys.",
            )
        if key.strip() != self.api_key:
            raise ApiError(
                401,
                f"Incorrect API key provided: {_mask(key.strip())}. You can find your API key "
                "at https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _model(self, model_id: str, *, embeddings: bool | None = None) -> dict[str, Any]:
        if model_id not in self.models:
            raise ApiError(
                404,
                f"The model `{model_id}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if embeddings is False and "embedding" in model_id:
            raise ApiError(
                404,
                "This is not a chat model and thus not supported in the v1/chat/completions "
                "endpoint. Did you mean to use v1/completions?",
            )
        if embeddings is True and "embedding" not in model_id:
            raise ApiError(
                404, f"This model does not support embeddings: {model_id}", code="model_not_found"
            )
        return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}

    def _embeddings(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise _invalid("you must provide a model parameter")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise _invalid(
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference."
            )
        self._model(body["model"], embeddings=True)
        dimensions = body.get("dimensions") or 8
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise _invalid(
                "Invalid 'dimensions': expected an integer >= 1.", "dimensions", "invalid_value"
            )
        base64_format = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector: Any = embedding(text, dimensions)
            if base64_format:
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = sum(_words(t) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _chat(self, send: Any, receive: Any, body: Any, request_id: str) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.generations_total += 1
        try:
            validate(body)
            model = body["model"]
            self._model(model, embeddings=False)
            if body.get("stream"):
                self.streams_total += 1
            if self.rate_limited > 0:
                self.rate_limited -= 1
                raise ApiError(
                    429,
                    f"Rate limit reached for {model} in organization org-standin on requests "
                    "per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s. Visit "
                    "https://platform.openai.com/account/rate-limits to learn more.",
                    kind="requests",
                    code="rate_limit_exceeded",
                    headers={"retry-after": "1"},
                )
            if self.overloaded > 0:
                self.overloaded -= 1
                raise ApiError(
                    503,
                    "The engine is currently overloaded, please try again later",
                    kind="server_error",
                )
            answer = plan(body, self.reply, self.tool_preamble)
            completion_id = _random_id("chatcmpl-", 29)
            created = int(time.time())
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                stream = chunks(answer, model, completion_id, created, include_usage=include_usage)
                await self._stream(send, receive, stream, request_id)
                return
            pause = partial(trio.sleep, self.delay * answer.completion_tokens)
            if not await _unless_disconnected(receive, pause):
                return
            if self.die_after is not None:
                raise _Aborted("stand-in fault: connection aborted before the response")
            await _send(send, 200, completion(answer, model, completion_id, created), request_id)
        finally:
            self.in_flight -= 1

    async def _stream(
        self,
        send: Any,
        receive: Any,
        stream: Iterator[tuple[bool, dict[str, Any]]],
        request_id: str,
    ) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-request-id", request_id.encode()),
            (b"openai-processing-ms", b"1"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        died = False

        async def write() -> None:
            nonlocal died
            for sent, (is_delta, data) in enumerate([*stream, (False, None)]):
                if is_delta:
                    await trio.sleep(self.delay)
                if self.die_after is not None and sent >= self.die_after:
                    died = True
                    return
                await _send_data(send, "[DONE]" if data is None else _json(data))
                if self.fail_midstream and is_delta:
                    self.errors["server_error"] += 1
                    error = ApiError(
                        500,
                        "The server had an error while processing your request. Sorry about that!",
                        kind="server_error",
                    )
                    await _send_data(send, _json(error.body()))
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


def _json(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


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
    payload = _json(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if request_id:
        headers += [(b"x-request-id", request_id.encode()), (b"openai-version", b"2020-10-01")]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _send_data(send: Any, data: str) -> None:
    chunk = f"data: {data}\n\n".encode()
    await send({"type": "http.response.body", "body": chunk, "more_body": True})
