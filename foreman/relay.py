"""Relay one request to the target and its answer back, byte for byte.

The shape (see ``docs/adr/0002-ndjson-streaming.md``)::

    handler ── nursery.start(pump) ──► pump task (in the gateway's nursery)
                                        [holds the gate] ── request ──► target
    handler ◄── started(Reply) ────────  status + content type known
    body    ◄── memory channel ◄──────── one NDJSON line at a time

An error before ``started()`` comes out of ``nursery.start`` in the handler,
while a real HTTP status can still be chosen. After it, the pump never raises:
a target that stalls or breaks mid-stream becomes one final ``{"error": ...}``
line, as Ollama itself writes it (reference §4). A client that goes away
cancels the body, which cancels the pump, which aborts the upstream request
and releases the gate at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass

import httpx
import trio

from .errors import TargetError
from .gate import Gate
from .jsonwire import error_body
from .target import Target

__all__ = ["NDJSON", "Reply", "relay"]

LOGGER = logging.getLogger("foreman.relay")

NDJSON = "application/x-ndjson"

#: Response headers relayed to the client. Ollama sets only these (besides Date and
#: the framing headers); ``content-length`` matters only on HEAD, where there is no body.
RELAYED_HEADERS = frozenset({"content-type", "location", "retry-after", "www-authenticate"})


@dataclass
class Reply:
    """The target's answer as the handler sees it.

    Exactly one of ``body`` (a whole, non-streaming answer) and ``lines`` (an
    NDJSON stream, each item one ``\\n``-terminated line) is set.
    ``gate_wait`` is in seconds (None when no gate was passed). ``outcome`` is
    filled in as a stream ends: ``"done"``, ``"error"`` (an error line was
    sent) or ``"cancelled"``.
    """

    status: int
    headers: list[tuple[str, str]]
    gate_wait: float | None
    body: bytes | None = None
    lines: trio.MemoryReceiveChannel[bytes] | None = None
    outcome: str = "done"
    _pump_scope: trio.CancelScope | None = None

    def close(self) -> None:
        """End a streaming reply early or late: stops the pump, which frees the gate at once.

        Idempotent; does nothing for a whole reply.
        """
        if self.lines is None or self._pump_scope is None:
            return
        self._pump_scope.cancel()  # first: stop the pump and free the gate
        self.lines.close()  # then: the pump never sees BrokenResourceError


async def relay(
    nursery: trio.Nursery,
    target: Target,
    method: str,
    path: str,
    *,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    params: str | None = None,
    header_timeout: float | None = None,
    gate: Gate | None = None,
) -> Reply:
    """Send a request to the target, through ``gate`` if given, and return its reply.

    The pump runs in ``nursery`` (the gateway's), so that the task holding the
    gate outlives this call while the body streams. ``header_timeout`` bounds
    the wait for the target's status line (counted after the gate).

    Returns:
        a :class:`Reply` with the target's status and content type, holding the
        whole body unless the target answered ``application/x-ndjson``.

    Raises:
        GateFull: the gate's waiting line is full.
        TargetError: the target could not be reached or broke before answering.
    """
    send, receive = trio.open_memory_channel[bytes](0)

    async def pump(*, task_status: trio.TaskStatus[Reply]) -> None:
        with send, trio.CancelScope() as scope:
            async with AsyncExitStack() as stack:
                waited = await stack.enter_async_context(gate.hold()) if gate else None
                response = await stack.enter_async_context(
                    target.stream(
                        method,
                        path,
                        content=content,
                        headers=headers,
                        params=params,
                        header_timeout=header_timeout,
                    )
                )
                status, relayed = response.status_code, _relayed(response, method)
                if not response.headers.get("content-type", "").startswith(NDJSON):
                    body = await target.read(response)
                    receive.close()
                    task_status.started(Reply(status, relayed, waited, body=body))
                    return
                reply = Reply(status, relayed, waited, lines=receive, _pump_scope=scope)
                task_status.started(reply)
                reply.outcome = "cancelled"  # unless the lines run to their end
                reply.outcome = await _pump_lines(target, response, send)

    reply: Reply = await nursery.start(pump)
    return reply


def _relayed(response: httpx.Response, method: str) -> list[tuple[str, str]]:
    wanted = RELAYED_HEADERS | {"content-length"} if method == "HEAD" else RELAYED_HEADERS
    return [(k, v) for k, v in response.headers.items() if k in wanted]


async def _pump_lines(
    target: Target, response: httpx.Response, send: trio.MemorySendChannel[bytes]
) -> str:
    """Forward the body line by line; returns the outcome (see :attr:`Reply.outcome`)."""
    try:
        return await _forward_lines(target, response, send)
    except trio.BrokenResourceError:  # the client is gone (normally we are cancelled first)
        return "cancelled"


async def _forward_lines(
    target: Target, response: httpx.Response, send: trio.MemorySendChannel[bytes]
) -> str:
    """Send complete lines as they arrive; on a target failure, one error line instead."""
    buffer = b""
    try:
        async with aclosing(target.chunks(response)) as chunks:
            async for chunk in chunks:
                buffer += chunk
                if b"\n" not in chunk:
                    continue
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    await send.send(line + b"\n")
        if buffer:  # a last line without its newline is passed on as it is
            await send.send(buffer)
        return "done"
    except TargetError as exc:
        LOGGER.warning("stream from the target ended early: %s", exc)
        # a partial line is dropped: the error must stand on a line of its own
        await send.send(error_body(str(exc)) + b"\n")
    except trio.BrokenResourceError:
        raise
    except Exception:  # a bug must not take the whole service down with it
        LOGGER.exception("relay failed mid-stream")
        await send.send(error_body("foreman: internal error while relaying the stream") + b"\n")
    return "error"
