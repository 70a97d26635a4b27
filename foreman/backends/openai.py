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
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Literal

import httpx2
import openai

from ..dataplane.errors import (
    ModelNotFound,
    TargetBroken,
    TargetError,
    TargetTimeout,
    TargetUnreachable,
)
from ..dataplane.errors import classify as classify_transport
from .translate import (
    Delta,
    Finish,
    IncompleteStream,
    Message,
    Reply,
    Request,
    StreamError,
    ToolCall,
    data_url,
    load_answer,
    parse_request,
    respond,
    status_error,
)

__all__ = ["OpenAIBackend", "classify"]

KIND = "openai backend"
#: The SDK's own default (foreman does not let ``OPENAI_BASE_URL`` decide).
DEFAULT_URL = "https://api.openai.com/v1"
#: The exceptions :func:`classify` knows; anything else is a bug and propagates.
ERRORS = (openai.OpenAIError, httpx2.HTTPError, ValueError)


def classify(exc: Exception, name: str, model: str | None = None) -> TargetError | ModelNotFound:
    """foreman's error for what the ``openai`` SDK (or httpx2 under it) raised.

    By type, never by text: :class:`openai.APIConnectionError` and its subclass
    :class:`openai.APITimeoutError` (raised also while a stream is read) are told
    apart by the httpx2 exception they wrap (``ConnectError``/``ConnectTimeout``:
    :class:`TargetUnreachable`; a read timeout: :class:`TargetTimeout`; a broken
    connection: :class:`TargetBroken`); :class:`openai.APIStatusError` goes by its
    ``status_code`` (:func:`~foreman.backends.translate.status_error`), an error
    object inside the stream (:class:`~foreman.backends.translate.StreamError`) by its
    ``code`` when that is an HTTP status (vLLM's habit); a bare httpx2 error (a
    failure while the stream is read) goes through :func:`foreman.dataplane.errors.classify`.
    Anything else is :class:`TargetBroken`.

    Args:
        model: the backend's model id for an inference call, so that 404 becomes
            :class:`ModelNotFound`; None for foreman's own calls.
    """
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") if isinstance(body.get("message"), str) else exc.message
        return status_error(name, KIND, exc.status_code, message, model)
    if isinstance(exc, StreamError) and exc.status is not None:
        return status_error(name, KIND, exc.status, exc.message, model)
    if isinstance(exc, openai.APIConnectionError):
        if isinstance(exc.__cause__, httpx2.HTTPError):
            return classify_transport(exc.__cause__, name, kind=KIND)
        if isinstance(exc, openai.APITimeoutError):
            return TargetTimeout(name, "APITimeoutError", kind=KIND)
        return TargetUnreachable(name, exc.message, kind=KIND)
    if isinstance(exc, httpx2.HTTPError):
        return classify_transport(exc, name, kind=KIND)
    return TargetBroken(name, str(exc) or type(exc).__name__, kind=KIND)


class OpenAIBackend:
    """An OpenAI-compatible server that answers Ollama's chat and generate requests.

    One :class:`openai.AsyncOpenAI` client per backend, with ``max_retries=0``
    (foreman decides about retries and fallback) over its own
    :class:`httpx2.AsyncClient`. With no ``api_key`` no ``Authorization`` header is
    sent (local servers need none; the SDK would otherwise refuse to start).

    Args:
        name: the backend's name in foreman, used in error messages.
        endpoint: the API's base URL, ``/v1`` included; None for OpenAI's own.
        transport: replaces the network (tests).
        timeout: seconds the server may stay silent (read, write, pool).
        connect_timeout: seconds to make a connection.
    """

    type = "openai"

    def __init__(
        self,
        name: str,
        endpoint: str | None,
        api_key: str | None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.name = name
        limits = httpx2.Timeout(timeout, connect=connect_timeout)
        self.http = httpx2.AsyncClient(transport=transport, timeout=limits)
        self._base = (endpoint or DEFAULT_URL).rstrip("/")
        self._key = api_key
        # Without a key: a placeholder stops the SDK from reading OPENAI_API_KEY (or
        # refusing to start), and each call omits the header (the SDK checks per call).
        self._headers = {} if api_key else {"Authorization": openai.omit}
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "unused",
            base_url=endpoint or DEFAULT_URL,
            max_retries=0,
            timeout=limits,
            http_client=self.http,
        )

    async def send_native(
        self, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> httpx2.Response:
        """POST ``body`` to the API as it is (no translation) and return the streamed answer.

        ``path`` is relative to the base URL, which ends in ``/v1`` (``/chat/completions``);
        the backend's key goes in ``Authorization: Bearer``.
        The caller closes the response. Raises :class:`httpx2.HTTPError` when no answer came.
        """
        headers = list(headers)
        if self._key:
            headers.append((b"authorization", b"Bearer " + self._key.encode()))
        request = self.http.build_request("POST", self._base + path, content=body, headers=headers)
        return await self.http.send(request, stream=True)

    async def aclose(self) -> None:
        """Close the client and its connections."""
        await self._client.close()

    async def models(self, *, timeout: float = 5.0) -> list[tuple[str, int | None]]:  # noqa: ASYNC109
        """The models the server lists (``GET /v1/models``): ``[(id, size or None)]``.

        OpenAI gives no sizes; a server that adds an integer ``size`` has it passed
        on. Raises :class:`~foreman.dataplane.errors.TargetError`.
        """
        try:
            pages = self._client.models.list(timeout=timeout, extra_headers=self._headers)
            return [(m.id, _size(m)) async for m in pages]
        except ERRORS as exc:
            raise classify(exc, self.name) from exc

    async def answer(
        self, endpoint: Literal["chat", "generate"], fields: dict[str, Any], model: str
    ) -> tuple[str, AsyncIterator[bytes]]:
        """Answer an Ollama request with the server's ``model``, in Ollama's shape.

        See :func:`foreman.backends.translate.respond` for what comes back and when it
        raises; the module docstring for what is translated and what is ignored.

        Raises:
            TargetError: before the first delta (see :func:`classify`); also
                :class:`~foreman.dataplane.errors.ModelNotFound` for a 404.
        """
        request = parse_request(endpoint, fields)
        if request.load_only:
            return load_answer(request)
        reply = Reply(request)
        fail = partial(classify, name=self.name, model=model)
        try:
            stream = await self._client.chat.completions.create(
                **_params(request, model), extra_headers=self._headers
            )
        except ERRORS as exc:
            raise fail(exc) from exc
        return await respond(reply, stream, _Events(), fail, ERRORS)


def _size(model: Any) -> int | None:
    size = getattr(model, "size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) else None


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
