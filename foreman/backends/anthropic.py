"""Claude behind Ollama's API: the Anthropic Messages API through the official ``anthropic`` SDK.

Request (Ollama → Messages API): system messages (wherever they stand) and generate's
``system`` become the top-level ``system``, joined by blank lines; images become
``image`` blocks (base64, media type sniffed); an assistant's ``tool_calls`` become
``tool_use`` blocks and the ``tool`` messages after it ``tool_result`` blocks of one
user message; ``tools`` become ``{name, description, input_schema}``; ``options``
``stop`` (``stop_sequences``) and ``num_predict`` (``max_tokens``, which Claude always
needs: 4096 when absent, -1 or -2). Ignored: ``options`` ``temperature``, ``top_p``
and ``top_k`` (the SDK 2.x sends ``anthropic-version: 2026-10-21``, which answers 400 to
any of them, even at their defaults, and no longer has the parameters), ``format``
(no JSON mode here), ``think``, ``keep_alive``, and generate's ``raw``, ``suffix``,
``template``, ``context``.

Answer (Messages stream → Ollama): ``text_delta`` → one line each; a ``tool_use`` block →
one line with its ``tool_calls`` once the block's JSON is complete (``content_block_stop``);
thinking and citations are dropped. ``stop_reason`` ``max_tokens`` (or
``model_context_window_exceeded``) is ``done_reason: "length"``, anything else
``"stop"``. ``prompt_eval_count`` is all input tokens (``input_tokens`` plus the cache's
``cache_creation_input_tokens`` and ``cache_read_input_tokens``), ``eval_count`` the
``output_tokens``. The request always streams, also for ``"stream": false`` (then read
whole before answering), so long answers never hit the SDK's non-streaming limits.

Errors: :func:`classify`. The SDK sends the request and raises for an error status;
the stream's events are read from its HTTP response by
:func:`~foreman.backends.translate.sse_events` (see there why not by the SDK's
iterator). An ``event: error`` carries no HTTP status; its ``error.type`` gives the
status the API documents for it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import Any

import anthropic
import httpx2

from ..dataplane.errors import ModelNotFound, TargetError
from .sdk import SdkBackend, classify_sdk
from .translate import (
    Delta,
    Finish,
    IncompleteStream,
    Message,
    Request,
    StreamError,
    ToolCall,
    media_type,
)

__all__ = ["AnthropicBackend", "classify"]

KIND = "anthropic backend"
#: ``max_tokens`` when the client sets no ``num_predict``: Claude needs one.
DEFAULT_MAX_TOKENS = 4096
#: The exceptions :func:`classify` knows; anything else is a bug and propagates.
ERRORS = (anthropic.AnthropicError, httpx2.HTTPError, ValueError)
#: The status the API documents for each ``error.type`` (for errors inside a stream).
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def classify(exc: Exception, name: str, model: str | None = None) -> TargetError | ModelNotFound:
    """foreman's error for what the ``anthropic`` SDK (or httpx2 under it) raised.

    :func:`foreman.backends.sdk.classify_sdk` with Anthropic's SDK: an
    :class:`anthropic.APIStatusError` names the API's own ``error.message`` (529
    "overloaded" is :class:`TargetBusy`); an ``event: error`` inside the stream goes by
    the status the API documents for its ``error.type`` (:data:`ERROR_TYPE_STATUS`).

    Args:
        model: the backend's model id for an inference call, so that 404 becomes
            :class:`ModelNotFound`; None for foreman's own calls (404 is then
            :class:`TargetStatus`).
    """
    return classify_sdk(exc, name, model, sdk=anthropic, kind=KIND, message=_api_message)


def _api_message(exc: anthropic.APIStatusError) -> str:
    return exc.api_message or exc.message


def _params(request: Request, model: str) -> dict[str, Any]:
    """The Messages API's parameters for ``request``."""
    options = request.options
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": options.num_predict or DEFAULT_MAX_TOKENS,
        "messages": _messages(request.messages),
    }
    if system := "\n\n".join(text for text in request.system if text):
        params["system"] = system
    if options.stop:
        params["stop_sequences"] = options.stop
    if request.tools:
        params["tools"] = [_tool(tool["function"]) for tool in request.tools]
    return params


def _tool(function: dict[str, Any]) -> dict[str, Any]:
    tool = {"name": function["name"]}
    if function.get("description"):
        tool["description"] = function["description"]
    tool["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    return tool


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Ollama's messages as Claude's: tool results join in one user message; empty text
    blocks are left out (Claude refuses them), and so are messages left empty."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        if message.role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
            if (
                out
                and out[-1]["role"] == "user"
                and out[-1]["content"][-1]["type"] == "tool_result"
            ):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
            continue
        blocks: list[dict[str, Any]] = [
            {
                "type": "image",
                "source": {"type": "base64", "media_type": media_type(image), "data": image},
            }
            for image in message.images
        ]
        if message.content:
            blocks.append({"type": "text", "text": message.content})
        blocks += [
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
            for call in message.tool_calls
        ]
        if blocks:
            out.append({"role": message.role, "content": blocks})
    return out


class _Events:
    """Reads a Messages stream: text deltas, tool calls once complete, stop reason, usage."""

    def __init__(self) -> None:
        self._tools: dict[int, tuple[str, str, list[str]]] = {}  # index -> id, name, JSON
        self._usage: dict[str, int] = {}
        self._stop_reason: str | None = None

    def feed(self, event: str, data: str) -> list[Delta]:
        body = json.loads(data)
        if event == "error":
            error = body.get("error") or {}
            status = ERROR_TYPE_STATUS.get(error.get("type"), 500)
            raise StreamError(str(error.get("message") or data), status)
        kind = body.get("type")
        if kind == "message_start":
            self._count(body["message"]["usage"])
        elif kind == "content_block_start":
            block = body["content_block"]
            if block["type"] == "tool_use":
                self._tools[body["index"]] = (block["id"], block["name"], [])
            elif block["type"] == "text" and block.get("text"):
                return [Delta(text=block["text"])]
        elif kind == "content_block_delta":
            delta = body["delta"]
            if delta["type"] == "text_delta":
                return [Delta(text=delta["text"])]
            if delta["type"] == "input_json_delta" and body["index"] in self._tools:
                self._tools[body["index"]][2].append(delta["partial_json"])
        elif kind == "content_block_stop" and body["index"] in self._tools:
            id_, name, parts = self._tools.pop(body["index"])
            arguments = json.loads("".join(parts) or "{}")
            return [Delta(tool_calls=(ToolCall(id_, name, arguments),))]
        elif kind == "message_delta":
            self._stop_reason = body["delta"].get("stop_reason")
            self._count(body.get("usage") or {})
        return []

    def _count(self, usage: dict[str, Any]) -> None:
        """Usage counts are cumulative: the latest value of each wins."""
        for key in _USAGE:
            if isinstance(value := usage.get(key), int):
                self._usage[key] = value

    def end(self) -> Finish:
        if self._stop_reason is None:
            raise IncompleteStream
        length = self._stop_reason in ("max_tokens", "model_context_window_exceeded")
        prompt = sum(self._usage.get(key, 0) for key in _USAGE[:3])
        return Finish("length" if length else "stop", prompt, self._usage.get(_USAGE[3], 0))


_USAGE = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)


class AnthropicBackend(SdkBackend):
    """A Claude endpoint that answers Ollama's chat and generate requests
    (:class:`~foreman.backends.sdk.SdkBackend` over :class:`anthropic.AsyncAnthropic`).

    With no ``api_key`` the SDK sends no credentials at all (it does not go looking in
    the environment or in profile files). Native requests carry the key in
    ``x-api-key``; ``path`` is the API's own (``/v1/messages``). Claude's model list
    gives no sizes.

    Arguments as :class:`~foreman.backends.sdk.SdkBackend`'s;
    ``endpoint``: the API's base URL; None for ``https://api.anthropic.com``.
    """

    type = "anthropic"
    #: The SDK's own default (foreman does not let ``ANTHROPIC_BASE_URL`` decide).
    default_url = "https://api.anthropic.com"
    errors = ERRORS
    classify_error = staticmethod(classify)
    events = _Events

    def _open_client(self, options: dict[str, Any]) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=self._key or "",
            default_headers=None if self._key else {"Authorization": anthropic.omit},
            **options,
        )

    def _key_header(self, key: str) -> tuple[bytes, bytes]:
        return (b"x-api-key", key.encode())

    def _list_models(self, timeout: float) -> AsyncIterable[Any]:  # noqa: ASYNC109
        return self._client.models.list(limit=1000, timeout=timeout)

    async def _create(self, request: Request, model: str) -> Any:
        return await self._client.messages.create(**_params(request, model), stream=True)
