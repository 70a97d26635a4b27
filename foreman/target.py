"""The Ollama target: one pooled httpx client and the few calls foreman makes itself.

Everything a client asks for is relayed through :meth:`Target.stream`; the
watchers use :meth:`Target.get_json` and :meth:`Target.warm`. Every httpx
failure leaves this module as a :class:`~foreman.errors.TargetError`.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import trio

from .errors import TargetStatus, TargetTimeout, classify
from .settings import Settings

__all__ = ["CONTROL_TIMEOUT", "Target", "open_target"]

LOGGER = logging.getLogger("foreman.target")

#: Seconds foreman's own calls (/api/tags, /api/ps) may take to answer.
CONTROL_TIMEOUT = 30.0

#: Pool size: one chat at a time, but embeds and passthrough calls run in
#: parallel; above this they queue for a connection (pool timeout: none, as
#: Ollama itself queues without bound).
LIMITS = httpx.Limits(max_connections=128, max_keepalive_connections=32, keepalive_expiry=30)


def _keepalive_options() -> list[tuple[int, int, int]]:
    """TCP keepalive: a target host that dies silently (sleep, power loss) is noticed in
    about a minute even while foreman waits for a ``"stream": false`` answer."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", 30),
        ("TCP_KEEPALIVE", 30),
        ("TCP_KEEPINTVL", 10),
        ("TCP_KEEPCNT", 3),
    ):  # TCP_KEEPALIVE is macOS's TCP_KEEPIDLE
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


class Target:
    """A connection pool to one Ollama server.

    Timeouts are trio deadlines around each wait, so they hold whatever the
    transport and run on trio's clock (``MockClock`` in tests).

    Args:
        client: an :class:`httpx.AsyncClient` whose ``base_url`` is the target.
        url: the target's base URL, for messages.
        idle_timeout: seconds the target may stay silent within a stream
            before the request fails with :class:`~foreman.errors.TargetTimeout`.
    """

    def __init__(self, client: httpx.AsyncClient, url: str, *, idle_timeout: float) -> None:
        self.client = client
        self.url = url
        self.idle_timeout = idle_timeout

    @contextmanager
    def _deadline(self, seconds: float | None, what: str) -> Iterator[None]:
        """Raise :class:`TargetTimeout` if the body outlasts ``seconds`` (None: no limit)."""
        try:
            with trio.fail_after(math.inf if seconds is None else seconds):
                yield
        except trio.TooSlowError:
            raise TargetTimeout(self.url, f"nothing for {seconds:g}s ({what})") from None

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: str | None = None,
        header_timeout: float | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send one request and yield the response with its body still unread.

        Any status is returned as is (Ollama's errors are the client's to see).
        Closing the context ends the exchange; cancelling the caller aborts the
        request, which makes Ollama abort the generation.

        Args:
            header_timeout: seconds to wait for the status line (None: as long
                as it takes; a ``"stream": false`` chat sends nothing until done).

        Raises:
            TargetError: connecting or sending failed, or no answer within ``header_timeout``.
        """
        request = self.client.build_request(
            method, path, content=content, headers=headers, params=params
        )
        try:
            with self._deadline(header_timeout, f"{method} {path}"):
                response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise classify(exc, self.url) from exc
        try:
            yield response
        finally:
            await response.aclose()

    async def read(self, response: httpx.Response) -> bytes:
        """The whole body of a response from :meth:`stream`; raises as :meth:`chunks` does."""
        return b"".join([chunk async for chunk in self.chunks(response)])

    async def chunks(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The body of a response from :meth:`stream`, chunk by chunk as it arrives.

        Raises:
            TargetTimeout: the target sent nothing for ``idle_timeout`` seconds.
            TargetError: the connection broke before the body was complete.
        """
        body = response.aiter_bytes()
        what = f"{response.request.method} {response.request.url.path} stream"
        try:
            while True:
                with self._deadline(self.idle_timeout, what):
                    try:
                        chunk = await anext(body)
                    except StopAsyncIteration:
                        return
                yield chunk
        except httpx.HTTPError as exc:
            raise classify(exc, self.url) from exc

    async def get_json(self, path: str) -> tuple[bytes, Any]:
        """GET ``path`` and return ``(body bytes, parsed JSON)``.

        Used for ``/api/tags`` and ``/api/ps``, bounded by :data:`CONTROL_TIMEOUT`.

        Raises:
            TargetError: transport failure, a non-200 status, or a body that is not JSON.
        """
        try:
            with self._deadline(CONTROL_TIMEOUT, f"GET {path}"):
                response = await self.client.get(path)
        except httpx.HTTPError as exc:
            raise classify(exc, self.url) from exc
        if response.status_code != 200:
            raise TargetStatus(
                self.url, f"{response.status_code} to GET {path}", response.status_code
            )
        try:
            return response.content, response.json()
        except ValueError as exc:
            raise TargetStatus(self.url, f"invalid JSON to GET {path}", 200) from exc

    async def warm(self, model: str) -> None:
        """Load ``model`` and keep it loaded: ``POST /api/embed`` with ``keep_alive: -1``.

        Mirrors Ollama's canonical pre-load call (reference §8): the runner's
        idle duration becomes "forever" (``expires_at`` ≈ 292 years ahead).

        Raises:
            TargetError: transport failure or a non-200 answer (its ``error`` text is kept).
        """
        body = {"model": model, "input": "warm-up", "keep_alive": -1}
        try:
            with self._deadline(self.idle_timeout, "warm-up"):
                response = await self.client.post("/api/embed", json=body)
        except httpx.HTTPError as exc:
            raise classify(exc, self.url) from exc
        if response.status_code != 200:
            detail = f"{response.status_code} to the warm-up of {model!r}: "
            raise TargetStatus(
                self.url, detail + _error_text(response.content), response.status_code
            )


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


@asynccontextmanager
async def open_target(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[Target]:
    """Open the pooled client for ``settings.ollama_url``.

    Timeouts: ``connect_timeout`` to connect (httpx); ``idle_timeout`` between
    stream chunks (:meth:`Target.chunks`), so a stream may run for hours as
    long as chunks keep coming; no read or pool timeout in httpx itself.
    ``FOREMAN_OLLAMA_TOKEN``, if set, goes out as ``Authorization: Bearer``.
    Proxy variables from the environment are ignored. Connections use TCP
    keepalive, so a target host that vanishes mid-request is noticed.

    Args:
        settings: foreman's settings.
        transport: replaces the network (tests pass the stand-in's in-process transport).
    """
    headers = {"User-Agent": "foreman"}
    if settings.ollama_token:
        headers["Authorization"] = f"Bearer {settings.ollama_token}"
    timeout = httpx.Timeout(
        connect=settings.connect_timeout, read=None, write=settings.idle_timeout, pool=None
    )
    async with httpx.AsyncClient(
        base_url=settings.ollama_url,
        headers=headers,
        timeout=timeout,
        transport=transport
        or httpx.AsyncHTTPTransport(limits=LIMITS, socket_options=_keepalive_options()),
        trust_env=False,
        follow_redirects=False,
    ) as client:
        yield Target(client, settings.ollama_url, idle_timeout=settings.idle_timeout)
