"""What the Claude and OpenAI translators share: Ollama's side of a request and of its answer.

A translator turns an Ollama ``/api/chat`` or ``/api/generate`` request into a call to
another API through that API's SDK, and the answer's server-sent events back into
Ollama's NDJSON. This module holds everything that does not depend on the backend::

    fields ─parse_request()─► Request ─backend: SDK call─► AsyncStream (its HTTP response)
                                                              │ sse_events(): (event, data)
                                                              │ backend's Events: → Delta*
                                                              ▼
    client ◄── NDJSON lines / one JSON object ◄── respond() ◄─┘  (Reply: Ollama's objects)

:func:`respond` reads the stream until the first :class:`Delta` (or the end) *before*
it returns, so that any failure up to that point raises a
:class:`~foreman.dataplane.errors.TargetError` while foreman can still choose the status, or
fall back to another backend. After it returns, failures never raise: the stream
ends with one ``{"error": "..."}`` line and no ``done: true`` line, as Ollama ends a
stream that fails midway. With ``"stream": false`` the whole answer is read before
:func:`respond` returns, so every failure raises.

The SDK sends the request (credentials, headers, error statuses as typed exceptions)
but its own stream iterator is never started: on an error event it raises from
inside its nested async generators and leaves the inner ones suspended, which trio
reports as a ``ResourceWarning`` when they are garbage-collected. Instead
:func:`sse_events` reads the SDK stream's ``response``, and :func:`close_stream`
finishes that generator chain by cancelling its pending read before closing. The
body :func:`respond` returns is a plain async iterator object, not a generator: its
``aclose()`` closes the upstream even when the body was never iterated.

Output is Ollama's, byte for byte where it can be: Go's JSON
(:func:`foreman.dataplane.jsonwire.dumps`),
keys in Ollama's struct order, ``created_at`` in RFC 3339 UTC with nanoseconds and
trailing zeros trimmed, durations in integer nanoseconds measured with trio's clock,
and metrics that are zero left out (Go's ``omitempty``: ``load_duration`` is never
sent, since no model is loaded). Deliberately absent: generate's ``context`` (there
are no token ids to give back) and ``thinking``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx2
import trio

from ..dataplane.errors import (
    ModelNotFound,
    TargetBroken,
    TargetBusy,
    TargetError,
    TargetStatus,
    TargetUnauthorized,
)
from ..dataplane.jsonwire import JSON_CONTENT_TYPE, dumps

__all__ = [
    "JSON_CONTENT_TYPE",
    "NDJSON",
    "Delta",
    "Events",
    "Finish",
    "IncompleteStream",
    "StreamError",
    "Message",
    "Options",
    "Reply",
    "Request",
    "ToolCall",
    "close_stream",
    "created_at",
    "data_url",
    "load_answer",
    "media_type",
    "parse_request",
    "respond",
    "sse_events",
    "status_error",
]

NDJSON = "application/x-ndjson"
Endpoint = Literal["chat", "generate"]


# --- Ollama's request ----------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One tool call: ``id`` as the backend (or foreman) named it, ``arguments`` an object."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class Message:
    """One message of the conversation, system messages included, in their order.

    ``images`` are base64 strings without a ``data:`` prefix, as Ollama takes them;
    ``tool_call_id`` on a ``tool`` message names the call it answers (always set
    once parsed), ``tool_name`` the tool (newer Ollama clients send it).
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str = ""
    tool_name: str = ""


@dataclass
class Options:
    """The sampling ``options`` the backends understand; None when the client did not set them.

    ``num_predict`` is None when absent or below 1 (Ollama's -1 "no limit" and -2 "fill
    the context" have no equivalent). Claude takes only ``stop`` and ``num_predict``,
    OpenAI all of them. Neither takes ``top_k``, ``min_p``, ``typical_p``,
    ``repeat_penalty`` and ``repeat_last_n``, nor the load-time options (``num_ctx``...).
    """

    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    num_predict: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass
class Request:
    """An Ollama chat or generate request, as far as the translators use it.

    ``model`` is the name the client sent (echoed in every line). ``tools`` are
    Ollama's function tools, which are OpenAI's: ``{"type": "function", "function":
    {"name", "description", "parameters"}}``. ``format`` is ``"json"``, a JSON schema
    (a dict), or None. ``load_only``: there is nothing to answer (a chat without
    messages, a generate without a prompt), which Ollama treats as a load call.
    """

    endpoint: Endpoint
    model: str
    stream: bool
    messages: list[Message]
    tools: list[dict[str, Any]]
    options: Options
    format: str | dict[str, Any] | None
    load_only: bool
    unload: bool

    @property
    def system(self) -> list[str]:
        """The system messages' texts, in order."""
        return [m.content for m in self.messages if m.role == "system"]


def parse_request(endpoint: Endpoint, fields: dict[str, Any]) -> Request:
    """Read an Ollama request's fields (its parsed JSON) the way Ollama reads them.

    ``stream`` defaults to true. For chat, assistant ``tool_calls`` get ids and tool
    results the ids of their calls (see :func:`_pair_tool_calls`). For generate,
    ``system`` becomes a system message and ``prompt`` with ``images`` a user message.
    Ignored here: ``think``, ``keep_alive`` (but for telling a load from an unload),
    ``raw``, ``template``, ``context``, ``suffix`` (no backend fills in the middle),
    ``truncate``, ``shift``, ``logprobs``, and ``tools`` on generate. Fields of the
    wrong JSON type count as absent; what the backend makes of odd values is its
    answer to give.
    """
    messages: list[Message] = []
    if endpoint == "chat":
        for raw in _list(fields.get("messages")):
            if not isinstance(raw, dict):
                continue
            role = _text(raw.get("role")).lower() or "user"
            if role in ("system", "user", "assistant", "tool"):
                messages.append(
                    Message(
                        role=role,  # type: ignore[arg-type]
                        content=_text(raw.get("content")),
                        images=[i for i in _list(raw.get("images")) if isinstance(i, str)],
                        tool_calls=_tool_calls(raw.get("tool_calls")),
                        tool_call_id=_text(raw.get("tool_call_id")),
                        tool_name=_text(raw.get("tool_name")),
                    )
                )
        _pair_tool_calls(messages)
        load_only = not messages
    else:
        if system := _text(fields.get("system")):
            messages.append(Message(role="system", content=system))
        images = [i for i in _list(fields.get("images")) if isinstance(i, str)]
        prompt = _text(fields.get("prompt"))
        if prompt or images:
            messages.append(Message(role="user", content=prompt, images=images))
        load_only = not (prompt or images)
    tools = _list(fields.get("tools")) if endpoint == "chat" else []
    return Request(
        endpoint=endpoint,
        model=_text(fields.get("model")),
        stream=fields.get("stream") is not False,
        messages=messages,
        tools=[t for t in tools if isinstance(t, dict) and _tool_name(t)],
        options=_options(fields.get("options")),
        format=_format(fields.get("format")),
        load_only=load_only,
        unload=fields.get("keep_alive") in (0, "0", "0s", "0m", "0h"),
    )


def _pair_tool_calls(messages: list[Message]) -> None:
    """Give every assistant tool call an id and every tool result the id of its call.

    Ollama's history may carry ids (``tool_calls[].id``, ``tool_call_id``, newer
    versions) or only names (``tool_name``) or nothing; both APIs need ids that match.
    A call without one gets ``call_<message>_<call>``: derived from its position, so
    the same history gives the same ids on every turn (and Claude's prompt cache
    still hits). A tool result takes, among the calls of the assistant message
    before it not yet answered, the one with its ``tool_call_id``, else the first
    with its ``tool_name``, else the first. One with no call left keeps its own id
    (or gets one), and the backend says what it thinks of that.
    """
    pending: list[ToolCall] = []
    for m, message in enumerate(messages):
        if message.role == "assistant":
            message.tool_calls = [
                call if call.id else ToolCall(f"call_{m}_{c}", call.name, call.arguments)
                for c, call in enumerate(message.tool_calls)
            ]
            pending = list(message.tool_calls)
        elif message.role == "tool":
            match = next((c for c in pending if c.id == message.tool_call_id), None)
            match = match or next((c for c in pending if c.name == message.tool_name), None)
            match = match or (pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
                message.tool_call_id = match.id
            message.tool_call_id = message.tool_call_id or f"call_{m}_result"
        elif message.role == "user":
            pending = []


def _tool_calls(value: Any) -> list[ToolCall]:
    calls = []
    for raw in _list(value):
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            continue
        arguments = function.get("arguments")
        if isinstance(arguments, str):  # OpenAI's habit; Ollama itself wants an object
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = None
        calls.append(
            ToolCall(
                id=_text(raw.get("id")),
                name=str(function["name"]),
                arguments=arguments if isinstance(arguments, dict) else {},
            )
        )
    return calls


def _tool_name(tool: dict[str, Any]) -> str:
    function = tool.get("function")
    return str(function.get("name") or "") if isinstance(function, dict) else ""


def _options(value: Any) -> Options:
    raw = value if isinstance(value, dict) else {}
    stop = raw.get("stop")
    num_predict = raw.get("num_predict")
    return Options(
        temperature=_number(raw.get("temperature")),
        top_p=_number(raw.get("top_p")),
        stop=[stop] if isinstance(stop, str) else [s for s in _list(stop) if isinstance(s, str)],
        num_predict=n if (n := _integer(num_predict)) is not None and n >= 1 else None,
        seed=_integer(raw.get("seed")),
        presence_penalty=_number(raw.get("presence_penalty")),
        frequency_penalty=_number(raw.get("frequency_penalty")),
    )


def _format(value: Any) -> str | dict[str, Any] | None:
    if value == "json" or isinstance(value, dict):
        return value
    return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- images ----------------------------------------------------------------------------

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def media_type(image: str) -> str:
    """The media type of a base64 image, sniffed from its first bytes.

    PNG, JPEG, GIF and WebP, the formats both Claude and OpenAI take; anything else
    (or bad base64) is ``application/octet-stream``, which the backend then refuses
    with its own message.
    """
    try:
        head = base64.b64decode(image[:16], validate=False)
    except (binascii.Error, ValueError):
        return "application/octet-stream"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def data_url(image: str) -> str:
    """A base64 image as a ``data:`` URL (what OpenAI's ``image_url`` takes)."""
    return f"data:{media_type(image)};base64,{image}"


# --- errors ----------------------------------------------------------------------------


class IncompleteStream(Exception):
    """The backend's stream ended before the answer was complete (no stop reason)."""

    def __init__(self) -> None:
        super().__init__("the stream ended before the answer was complete")


class StreamError(Exception):
    """An error the backend sent inside its stream, with the HTTP status it stands for
    (None when it names none)."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def status_error(
    name: str, kind: str, status: int, message: str, model: str | None
) -> TargetError | ModelNotFound:
    """foreman's error for an HTTP error status from a backend's API.

    401, 403: :class:`TargetUnauthorized`; 429, 503, 529 (Anthropic's "overloaded"):
    :class:`TargetBusy`; 404 on an inference call (``model`` given):
    :class:`ModelNotFound` naming the backend's model id; any other 4xx:
    :class:`TargetStatus` (``"<status>: <message>"``); 5xx: :class:`TargetBroken`.
    """
    detail = f"{status}: {message}"
    if status in (401, 403):
        return TargetUnauthorized(name, detail, kind=kind)
    if status in (429, 503, 529):
        return TargetBusy(name, detail, kind=kind)
    if status == 404 and model is not None:
        return ModelNotFound(model)
    if 400 <= status < 500:
        return TargetStatus(name, detail, status, kind=kind)
    broken = TargetBroken(name, detail, kind=kind)
    broken.status = status
    return broken


# --- Ollama's answer -------------------------------------------------------------------


@dataclass(frozen=True)
class Delta:
    """A piece of the answer: text, or tool calls whose arguments are complete."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Finish:
    """How the answer ended: Ollama's ``done_reason`` and the token counts."""

    done_reason: Literal["stop", "length"]
    prompt_eval_count: int
    eval_count: int


class Events(Protocol):
    """A backend's reading of its server-sent events (one object per answer)."""

    def feed(self, event: str, data: str) -> list[Delta]:
        """The deltas one event (its name, its data) brings; often none.

        Raises:
            StreamError: the event is an error.
            ValueError, LookupError, TypeError: the data is not what the API documents.
        """
        ...

    def end(self) -> Finish:
        """How the answer ended, once the stream is over.

        Raises:
            IncompleteStream: the stream ended before the backend said why it stopped.
        """
        ...


class Stream(Protocol):
    """The SDK's open stream (``anthropic``/``openai`` ``AsyncStream``): only its HTTP
    response is read, and it is closed."""

    response: httpx2.Response

    async def close(self) -> None: ...


async def sse_events(response: httpx2.Response) -> AsyncIterator[tuple[str, str]]:
    """A response's server-sent events as ``(event name, data)``; the name may be ``""``.

    The parts of the WHATWG rules both APIs use: ``event:`` and ``data:`` fields
    (several ``data:`` lines join with ``\\n``), comments, and a blank line ending
    each event; an event without data is dropped.
    """
    event, data = "", []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


def created_at(ns: int | None = None) -> str:
    """Unix nanoseconds (default: now) as Go's RFC 3339 with trailing zeros trimmed."""
    seconds, fraction = divmod(time.time_ns() if ns is None else ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


class Reply:
    """Builds Ollama's objects for one answer and keeps its clock (trio's) and its text."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.started = trio.current_time()
        self.first: float | None = None  # when the first delta arrived
        self.text: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []

    def _head(self) -> dict[str, Any]:
        return {"model": self.request.model, "created_at": created_at()}

    def delta(self, delta: Delta) -> dict[str, Any]:
        """One ``done: false`` object: chat's ``message`` or generate's ``response``."""
        if self.first is None:
            self.first = trio.current_time()
        self.text.append(delta.text)
        if self.request.endpoint == "generate":
            return {**self._head(), "response": delta.text, "done": False}
        calls = [self._tool_call(call) for call in delta.tool_calls]
        message: dict[str, Any] = {"role": "assistant", "content": delta.text}
        if calls:
            message["tool_calls"] = calls
        return {**self._head(), "message": message, "done": False}

    def _tool_call(self, call: ToolCall) -> dict[str, Any]:
        function = {"index": len(self.tool_calls), "name": call.name, "arguments": call.arguments}
        out = {"id": call.id, "function": function} if call.id else {"function": function}
        self.tool_calls.append(out)
        return out

    def final(self, finish: Finish, *, whole: bool) -> dict[str, Any]:
        """The ``done: true`` object; ``whole`` puts in all the text (``"stream": false``).

        Metrics: ``total_duration`` from the call to the end, ``prompt_eval_duration``
        to the first delta, ``eval_duration`` the rest, all in nanoseconds; the counts
        are the backend's token usage. Zeros are left out, as Ollama leaves them out.
        """
        end = trio.current_time()
        first = end if self.first is None else self.first
        text = "".join(self.text) if whole else ""
        out = self._head()
        if self.request.endpoint == "generate":
            out["response"] = text
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if whole and self.tool_calls:
                message["tool_calls"] = self.tool_calls
            out["message"] = message
        out["done"] = True
        out["done_reason"] = finish.done_reason
        metrics = {
            "total_duration": _ns(end - self.started),
            "load_duration": 0,
            "prompt_eval_count": finish.prompt_eval_count,
            "prompt_eval_duration": _ns(first - self.started),
            "eval_count": finish.eval_count,
            "eval_duration": _ns(end - first),
        }
        out.update((key, value) for key, value in metrics.items() if value)
        return out


def load_answer(request: Request) -> tuple[str, AsyncIterator[bytes]]:
    """Ollama's answer to a request with nothing to answer: a load (or unload) call.

    Ollama answers a chat without messages, or a generate without a prompt, by
    loading the model (``done_reason: "load"``, or ``"unload"`` with ``keep_alive``
    0) and one JSON object, even when streaming was asked for. A backend has
    nothing to load, so foreman answers at once without calling it.
    """
    out: dict[str, Any] = {"model": request.model, "created_at": created_at()}
    if request.endpoint == "generate":
        out["response"] = ""
    else:
        out["message"] = {"role": "assistant", "content": ""}
    out.update(done=True, done_reason="unload" if request.unload else "load")
    return JSON_CONTENT_TYPE, _Once(dumps(out))


async def close_stream(stream: Stream, events: AsyncIterator[Any]) -> None:
    """Close an SDK stream at once, finishing the async generators that read it first.

    Safe in a cancelled context (all of it is shielded). ``events`` (which reads
    ``stream.response`` through httpx2's nested async generators) is resumed inside
    a cancelled scope of its own, so that each generator ends with ``Cancelled``
    rather than being left suspended for the garbage collector (where trio warns);
    events already buffered come out first, without a checkpoint. Then the
    response is closed.
    """
    with trio.CancelScope(shield=True):
        with trio.CancelScope() as scope, contextlib.suppress(Exception):
            scope.cancel()
            while True:
                await events.__anext__()
        await stream.close()


#: Failures while reading events that :func:`respond` hands to ``fail``: an error event,
#: a stream that ends too soon, and event data that is not what the API documents.
_STREAM_ERRORS = (StreamError, IncompleteStream, ValueError, LookupError, TypeError)


async def respond(
    reply: Reply,
    stream: Stream,
    events: Events,
    fail: Callable[[Exception], TargetError | ModelNotFound],
    errors: tuple[type[Exception], ...],
) -> tuple[str, AsyncIterator[bytes]]:
    """Read ``stream`` up to the first delta, then hand back Ollama's answer.

    Args:
        reply: made before the backend was called (its clock starts the durations).
        stream: the SDK's open stream, whose HTTP response is read here as
            server-sent events; closed before this raises, at the end of the body,
            or when the body is closed (``aclose``, also before it was iterated).
        events: the backend's reading of the events.
        fail: the backend's classification of a failure into foreman's error.
        errors: the exception types ``fail`` classifies besides :class:`StreamError`,
            :class:`IncompleteStream` and those of event data that is not as the API
            documents it (:class:`ValueError`, :class:`LookupError`, :class:`TypeError`);
            others propagate (after closing the stream) as bugs.

    Returns:
        ``("application/x-ndjson", lines)`` when streaming: one line (ending ``\\n``)
        per delta, then the ``done: true`` line, or an ``{"error": ...}`` line if the
        stream fails. For ``"stream": false``: ``("application/json; charset=utf-8",
        one object)``, with no newline.

    Raises:
        TargetError: the stream failed before its first delta (or, not streaming,
            before its end); also :class:`~foreman.dataplane.errors.ModelNotFound`.
    """
    lines = _Lines(reply, stream, events, fail, (*errors, *_STREAM_ERRORS))
    try:
        await lines.pull(until_delta=reply.request.stream)
    except BaseException:
        await lines.aclose()
        raise
    if reply.request.stream:
        return NDJSON, lines
    return JSON_CONTENT_TYPE, _Once(dumps(lines.final))


class _Lines:
    """The NDJSON body: an async iterator of lines that closes the SDK stream when done."""

    def __init__(
        self,
        reply: Reply,
        stream: Stream,
        events: Events,
        fail: Callable[[Exception], TargetError | ModelNotFound],
        errors: tuple[type[Exception], ...],
    ) -> None:
        self._reply, self._stream, self._events = reply, stream, events
        self._sse: AsyncIterator[tuple[str, str]] = sse_events(stream.response)
        self._fail, self._errors = fail, errors
        self._queue: deque[bytes] = deque()
        self._over = self._closed = False
        self.final: dict[str, Any] = {}

    async def pull(self, *, until_delta: bool) -> None:
        """Read events until a line is queued (or, not ``until_delta``, to the end).

        The stream is closed once it is over. Raises what ``fail`` makes of a
        failure, and leaves the stream open.
        """
        while not self._over and not (until_delta and self._queue):
            try:
                try:
                    event, data = await self._sse.__anext__()
                except StopAsyncIteration:
                    self._finish(self._events.end())
                    continue
                deltas = self._events.feed(event, data)
            except self._errors as exc:
                raise self._fail(exc) from exc
            for delta in deltas:
                if delta.text or delta.tool_calls:
                    self._queue.append(dumps(self._reply.delta(delta)) + b"\n")
        if self._over:
            await self.aclose()

    def _finish(self, finish: Finish) -> None:
        self.final = self._reply.final(finish, whole=not self._reply.request.stream)
        self._queue.append(dumps(self.final) + b"\n")
        self._over = True

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> bytes:
        if not self._queue and not self._over:
            try:
                await self.pull(until_delta=True)
            except (TargetError, ModelNotFound) as exc:
                self._queue.append(dumps({"error": str(exc)}) + b"\n")
                await self.aclose()
            except BaseException:  # cancelled (the client left), or a bug
                await self.aclose()
                raise
        if self._queue:
            return self._queue.popleft()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Close the upstream stream (once; shielded, so safe when cancelled)."""
        self._over = True
        if not self._closed:
            self._closed = True
            await close_stream(self._stream, self._sse)


class _Once:
    """An async iterator over exactly one chunk."""

    def __init__(self, body: bytes) -> None:
        self._chunks: Iterator[bytes] = iter((body,))

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        for chunk in self._chunks:
            return chunk
        raise StopAsyncIteration

    async def aclose(self) -> None:
        pass
