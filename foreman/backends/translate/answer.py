"""Ollama's side of an answer: errors of the other API, its server-sent events read
(:func:`sse_events`), and the NDJSON lines or JSON object given back (:func:`respond`,
:class:`Reply`). See :mod:`foreman.backends.translate` for the whole path."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx2
import trio

from ...dataplane.errors import (
    ModelNotFound,
    TargetError,
)
from ...dataplane.jsonwire import JSON_CONTENT_TYPE, dumps
from .errors import IncompleteStream, StreamError
from .request import Request, ToolCall

__all__ = [
    "JSON_CONTENT_TYPE",
    "NDJSON",
    "Delta",
    "Events",
    "Finish",
    "Reply",
    "close_stream",
    "created_at",
    "load_answer",
    "respond",
    "sse_events",
]

NDJSON = "application/x-ndjson"


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
