"""Any OpenAI-compatible server behind Ollama's API: chat completions through the ``openai`` SDK.

Request (Ollama → chat completions): messages keep their roles and order (system
messages too; generate's ``system`` and ``prompt`` become a system and a user
message); images become ``image_url`` parts with a ``data:`` URL; an assistant's
``tool_calls`` get ``function.arguments`` as a JSON string and ``tool`` messages a
``tool_call_id``; ``tools`` pass as they are (Ollama's are OpenAI's); ``options``
``temperature``, ``top_p``, ``stop``, ``seed``, ``presence_penalty``,
``frequency_penalty``, ``num_predict`` (``max_tokens``, left out when absent or
negative); ``format`` ``"json"`` → ``response_format: json_object``, a schema →
``json_schema`` (named ``response``). Ignored: ``top_k`` (not in OpenAI's API),
``think``, ``keep_alive``, and generate's ``raw``, ``suffix``, ``template``,
``context``. ``stream_options.include_usage`` is always asked for, for the counts.

Answer (chunks → Ollama): ``delta.content`` → one line each; tool calls, whose
arguments arrive in pieces, → one line with all of them when the choice finishes;
reasoning fields are dropped. ``finish_reason`` ``length`` is ``done_reason:
"length"``, anything else (``stop``, ``tool_calls``, ``content_filter``) ``"stop"``.
Counts come from ``usage`` (``prompt_tokens``, ``completion_tokens``), 0 (left out)
when the server sends none. A stream that ends without a ``finish_reason`` ends as
``"stop"`` (servers differ, and a broken connection raises anyway), unless tool
calls were still open: that is an error. The request always streams, also for
``"stream": false`` (then read whole before answering).

Errors: :func:`classify`. The SDK sends the request and raises for an error status;
the stream's events are read from its HTTP response by
:func:`~foreman.backends.translate.sse_events` (see there why not by the SDK's
iterator).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import Any

import httpx2
import openai

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
    data_url,
)

__all__ = ["OpenAIBackend", "classify"]

KIND = "openai backend"
#: The exceptions :func:`classify` knows; anything else is a bug and propagates.
ERRORS = (openai.OpenAIError, httpx2.HTTPError, ValueError)


def classify(exc: Exception, name: str, model: str | None = None) -> TargetError | ModelNotFound:
    """foreman's error for what the ``openai`` SDK (or httpx2 under it) raised.

    :func:`foreman.backends.sdk.classify_sdk` with OpenAI's SDK (whose
    :class:`openai.APITimeoutError` is raised also while a stream is read): an
    :class:`openai.APIStatusError` names the body's ``message`` when it is a string; an
    error object inside the stream goes by its ``code`` when that is an HTTP status
    (vLLM's habit), and is :class:`TargetBroken` otherwise.

    Args:
        model: the backend's model id for an inference call, so that 404 becomes
            :class:`ModelNotFound`; None for foreman's own calls.
    """
    return classify_sdk(exc, name, model, sdk=openai, kind=KIND, message=_api_message)


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("message") if isinstance(body.get("message"), str) else exc.message


def _params(request: Request, model: str) -> dict[str, Any]:
    """The chat completion's parameters for ``request``."""
    options = request.options
    params: dict[str, Any] = {
        "model": model,
        "messages": [_message(message) for message in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        if (value := getattr(options, key)) is not None:
            params[key] = value
    if options.stop:
        params["stop"] = options.stop
    if options.num_predict is not None:
        params["max_tokens"] = options.num_predict
    if request.tools:
        params["tools"] = request.tools
    if request.format == "json":
        params["response_format"] = {"type": "json_object"}
    elif isinstance(request.format, dict):
        schema = {"name": "response", "schema": request.format}
        params["response_format"] = {"type": "json_schema", "json_schema": schema}
    return params


def _message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        out["content"] = [
            *([{"type": "text", "text": message.content}] if message.content else []),
            *({"type": "image_url", "image_url": {"url": data_url(i)}} for i in message.images),
        ]
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _json(call.arguments)},
            }
            for call in message.tool_calls
        ]
    return out


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Events:
    """Reads chat completion chunks: text deltas, tool calls as the choice finishes, usage."""

    def __init__(self) -> None:
        self._tools: dict[int, list[str]] = {}  # index -> [id, name, arguments...]
        self._finish_reason: str | None = None
        self._usage = (0, 0)

    def feed(self, event: str, data: str) -> list[Delta]:
        if data == "[DONE]":
            return []
        chunk = json.loads(data)
        if isinstance(error := chunk.get("error"), dict):
            code = error.get("code")
            status = code if isinstance(code, int) and 400 <= code < 600 else None
            raise StreamError(str(error.get("message") or data), status)
        if usage := chunk.get("usage"):
            self._usage = (usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
        deltas = []
        for choice in (chunk.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                deltas.append(Delta(text=delta["content"]))
            for piece in delta.get("tool_calls") or ():
                parts = self._tools.setdefault(piece["index"], ["", ""])
                function = piece.get("function") or {}
                parts[0] = parts[0] or piece.get("id") or ""
                parts[1] = parts[1] or function.get("name") or ""
                parts.append(function.get("arguments") or "")
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                deltas += self._tool_calls()
        return deltas

    def _tool_calls(self) -> list[Delta]:
        calls = tuple(
            ToolCall(id_, name, json.loads("".join(arguments) or "{}"))
            for _, (id_, name, *arguments) in sorted(self._tools.items())
        )
        self._tools.clear()
        return [Delta(tool_calls=calls)] if calls else []

    def end(self) -> Finish:
        deltas = self._tool_calls()  # calls of a stream that ended without a finish_reason
        if deltas:
            raise IncompleteStream
        length = self._finish_reason == "length"
        return Finish("length" if length else "stop", *self._usage)


class OpenAIBackend(SdkBackend):
    """An OpenAI-compatible server that answers Ollama's chat and generate requests
    (:class:`~foreman.backends.sdk.SdkBackend` over :class:`openai.AsyncOpenAI`).

    With no ``api_key`` no ``Authorization`` header is sent (local servers need none;
    the SDK would otherwise refuse to start). Native requests carry the key in
    ``Authorization: Bearer``; ``path`` is relative to the base URL, which ends in
    ``/v1`` (``/chat/completions``). OpenAI's model list gives no sizes; a server that
    adds an integer ``size`` has it passed on.

    Arguments as :class:`~foreman.backends.sdk.SdkBackend`'s;
    ``endpoint``: the API's base URL, ``/v1`` included; None for OpenAI's own.
    """

    type = "openai"
    #: The SDK's own default (foreman does not let ``OPENAI_BASE_URL`` decide).
    default_url = "https://api.openai.com/v1"
    errors = ERRORS
    classify_error = staticmethod(classify)
    events = _Events

    @property
    def _headers(self) -> dict[str, Any]:
        """Each call's extra headers: without a key, no ``Authorization`` (the SDK checks
        per call)."""
        return {} if self._key else {"Authorization": openai.omit}

    def _open_client(self, options: dict[str, Any]) -> openai.AsyncOpenAI:
        # Without a key: a placeholder stops the SDK from reading OPENAI_API_KEY (or
        # refusing to start); each call omits the header (_headers).
        return openai.AsyncOpenAI(api_key=self._key or "unused", **options)

    def _key_header(self, key: str) -> tuple[bytes, bytes]:
        return (b"authorization", b"Bearer " + key.encode())

    def _list_models(self, timeout: float) -> AsyncIterable[Any]:  # noqa: ASYNC109
        return self._client.models.list(timeout=timeout, extra_headers=self._headers)

    def _size(self, model: Any) -> int | None:
        size = getattr(model, "size", None)
        return size if isinstance(size, int) and not isinstance(size, bool) else None

    async def _create(self, request: Request, model: str) -> Any:
        return await self._client.chat.completions.create(
            **_params(request, model), extra_headers=self._headers
        )
