"""Relay one request to the target and its answer back to the client, byte for byte.

The request's own task does everything: it holds the gate (when there is one),
sends the request, and writes the answer to the ASGI ``send`` as it arrives::

    client ── ASGI ──► request task [holds the gate] ── httpx2 ──► target
    client ◄── ASGI ◄── chunks as they come ◄──────────────────────┘

An error before the status line is sent comes out of :func:`relay` as a
:class:`~foreman.dataplane.errors.TargetError`, while a real HTTP status can still be
chosen. After it, :func:`relay` never raises for the target's sake: an NDJSON
stream that stalls or breaks ends with one ``{"error": ...}`` line, as Ollama
itself ends a stream that fails; a Server-Sent Events stream (the OpenAI and
Anthropic faces) ends with that face's own error event; any other body that
breaks is cut short, as it would be by a target that died. A client that goes
away cancels the task, which aborts the upstream request and releases the gate
at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx2
import trio

from ..backends.ollama.target import RELAYED_HEADERS, Target
from .errors import TargetError
from .exchange import Exchange
from .faces import NATIVE, EventTokens, stream_error
from .jsonwire import error_body

__all__ = ["NDJSON", "SSE", "relay", "relay_events", "rename"]

LOGGER = logging.getLogger("foreman.dataplane.relay")

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"

#: Bytes up to which an answer with a ``Content-Length`` is read whole before it is sent.
WHOLE_BODY_LIMIT = 1 << 20
#: Bytes of a stream read ahead of the client (see :class:`_Piled`).
PILE_LIMIT = 1 << 16

Send = Any  # the ASGI send callable


async def relay(
    target: Target,
    request: httpx2.Request,
    send: Send,
    exchange: Exchange,
    *,
    header_timeout: float | None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send ``request`` to the target and stream its answer to ``send``.

    Args:
        header_timeout: seconds to wait for the target's status line (None: no limit);
            after it, the target may stay silent ``idle_timeout`` seconds at a time.
        extra_headers: response headers foreman adds (CORS, ``Connection: close``).

    Sets ``exchange.ndjson`` and ``exchange.outcome`` (``done``, or ``error`` for a
    stream that ended with an error line).

    Raises:
        TargetError: the target could not be reached, or did not answer within
            ``header_timeout``; nothing has been sent to the client.
    """
    response = await target.send(request, header_timeout=header_timeout)
    try:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() in RELAYED_HEADERS]
        if extra_headers:
            headers.extend(extra_headers)
        start = {"type": "http.response.start", "status": response.status_code, "headers": headers}
        content_type = response.headers.get("content-type", "")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) <= WHOLE_BODY_LIMIT:
            # A small answer of known size (most of Ollama's JSON): read whole, so that
            # a body that breaks still gets a real status, then sent in one go.
            body = await target.read(response)
            if exchange.echo is not None:
                renamed = rename(body, exchange.echo, anywhere=exchange.face != NATIVE)
                if renamed != body:
                    body = renamed
                    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                    start["headers"] = [*headers, (b"content-length", str(len(body)).encode())]
            if exchange.count_tokens:
                exchange.final_line = body
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})
        elif content_type.startswith("application/x-ndjson"):
            exchange.ndjson = True
            await send(start)
            exchange.outcome = await _relay_lines(target, response, send, exchange)
        elif content_type.startswith(SSE):
            await send(start)
            exchange.outcome = await relay_events(
                target.chunks(response), send, exchange, echo=exchange.echo
            )
        else:
            await send(start)
            await _relay_body(target, response, send)
    finally:
        with trio.CancelScope(shield=True):
            await response.aclose()


async def _relay_body(target: Target, response: httpx2.Response, send: Send) -> None:
    """Pass a body through chunk by chunk; a broken one is cut short, as the target cut it."""
    try:
        async with aclosing(target.chunks(response)) as chunks:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except TargetError as exc:
        LOGGER.warning("body from the target ended early: %s", exc)
        return  # no final message: the client sees the body end before its length
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def relay_events(
    chunks: AsyncIterator[bytes],
    send: Send,
    exchange: Exchange,
    *,
    echo: tuple[bytes, bytes] | None = None,
) -> str:
    """Pass a Server-Sent Events stream through; returns ``done`` or ``error``.

    Each read's complete events (up to the last blank line) go out at once, bytes
    untouched (but for ``echo``: see :func:`rename`), so an event reaches the client as
    soon as the target finished it; a partial event waits for its end (at most
    :data:`WHOLE_BODY_LIMIT` bytes). If the target fails, the partial event is dropped
    and the face's own error event (:func:`foreman.dataplane.faces.stream_error`) ends
    the stream. Token counts go to ``exchange.tokens``
    (:class:`~foreman.dataplane.faces.EventTokens`).
    """
    pending = b""
    outcome = "done"
    exchange.events = True
    counter = EventTokens() if exchange.count_tokens else None
    try:
        async with aclosing(chunks) as each:  # type: ignore[type-var]
            async for chunk in each:
                pending += chunk
                end = pending.rfind(b"\n\n")
                if end < 0 and len(pending) < WHOLE_BODY_LIMIT:
                    continue
                end = len(pending) if end < 0 else end + 2
                events, pending = pending[:end], pending[end:]
                if echo is not None:
                    events = rename(events, echo, anywhere=True)
                if counter is not None:
                    counter.feed(events)
                await send({"type": "http.response.body", "body": events, "more_body": True})
        last = pending if echo is None else rename(pending, echo, anywhere=True)
    except TargetError as exc:
        LOGGER.warning("event stream from the target ended early: %s", exc)
        last, outcome = stream_error(exchange.face, exchange.key, str(exc)), "error"
    if counter is not None:
        exchange.tokens = counter.counts
    await send({"type": "http.response.body", "body": last, "more_body": False})
    return outcome


async def _relay_lines(
    target: Target, response: httpx2.Response, send: Send, exchange: Exchange
) -> str:
    """Pass an NDJSON stream through; returns ``done`` or ``error``.

    Whatever complete lines have come by the time the last write is done go out in one
    write (:class:`_Piled`), so a burst costs two sends (its first line, then the rest)
    while each line still leaves as soon as it is complete. On a target failure a partial
    line is dropped (the error must stand on a line of its own) and one ``{"error": ...}``
    line ends the stream. The last complete line is kept in ``exchange.final_line`` (for
    the token counts).
    """
    pending = lines = b""
    piled = _Piled()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(piled.fill, target.chunks(response))
        while (chunk := await piled.take()) is not None:
            end = chunk.rfind(b"\n")
            if end < 0:
                pending += chunk
                continue
            lines, pending = pending + chunk[: end + 1], chunk[end + 1 :]
            if exchange.echo is not None:
                lines = rename(lines, exchange.echo)
            await send({"type": "http.response.body", "body": lines, "more_body": True})
    if piled.error is None:
        last, outcome = pending, "done"  # a last line without its newline goes on as it is
        if exchange.echo is not None:
            last = rename(last, exchange.echo)
        if exchange.count_tokens and lines:
            exchange.final_line = lines[lines.rfind(b"\n", 0, len(lines) - 1) + 1 :]
    else:
        LOGGER.warning("stream from the target ended early: %s", piled.error)
        last, outcome = error_body(str(piled.error)) + b"\n", "error"
    await send({"type": "http.response.body", "body": last, "more_body": False})
    return outcome


class _Piled:
    """A body read in one task (:meth:`fill`) and taken in another (:meth:`take`): what
    piled up while the taker was writing is taken as one piece.

    httpx2 yields a body one HTTP chunk at a time, and Ollama sends each NDJSON line as
    a chunk of its own; when several came in one read of the socket, the filler gets
    them without waiting. A piece the taker is waiting for is handed over at once (so the
    first line is not held up by parsing the rest); what comes while the taker writes
    piles up and goes to the client in its next write. The filler also waits while
    :data:`PILE_LIMIT` bytes are piled (a slow client slows the reading from the target,
    as a single task would).
    """

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.done = False
        self.error: TargetError | None = None  # the body broke: what the filler caught
        self._ready = trio.Event()
        self._room = trio.Event()
        self._idle = False  # the taker waits for a piece

    async def fill(self, chunks: AsyncIterator[bytes]) -> None:
        """Read ``chunks`` to their end; a :class:`TargetError` is kept, not raised."""
        try:
            async with aclosing(chunks):  # type: ignore[type-var]
                async for chunk in chunks:
                    self.parts.append(chunk)
                    self.size += len(chunk)
                    self._ready.set()
                    if self._idle or self.size >= PILE_LIMIT:  # until the taker has it
                        self._room = trio.Event()
                        await self._room.wait()
        except TargetError as exc:
            self.error = exc
        finally:
            self.done = True
            self._ready.set()

    async def take(self) -> bytes | None:
        """What piled up since the last take, once there is something; None at the end."""
        while not self.parts:
            if self.done:
                return None
            self._ready = trio.Event()
            self._idle = True
            try:
                await self._ready.wait()
            finally:
                self._idle = False
        piece = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.parts, self.size = [], 0
        self._room.set()
        return piece


def rename(lines: bytes, echo: tuple[bytes, bytes], *, anywhere: bool = False) -> bytes:
    """Whole JSON lines (or one JSON body) with each line's leading ``echo[0]`` (Ollama's
    ``{"model":"<name it was sent>",``) made ``echo[1]``: a routed request's answer
    names the model as the client asked for it, as Ollama echoes a request's ``model``.
    Only a line's start is looked at: a newline byte never occurs inside a JSON line.

    With ``anywhere`` (the OpenAI and Anthropic faces, whose answers and events put
    ``model`` after other fields, or inside ``message``), every ``"model":"<name it was
    sent>"`` is renamed: that byte sequence only occurs as a JSON member (inside a JSON
    string its quotes would be escaped)."""
    old, new = echo
    if anywhere:
        return lines.replace(old[1:-1], new[1:-1])
    if not lines.startswith(old) and b"\n" + old not in lines:
        return lines
    return (b"\n" + lines).replace(b"\n" + old, b"\n" + new)[1:]
