"""The Ollama target: one pooled httpx client and the few calls foreman makes itself.

Everything a client asks for is relayed through :meth:`Target.stream`; the
watchers use :meth:`Target.get_json` and :meth:`Target.warm`. Every httpx
failure leaves this module as a :class:`~foreman.errors.TargetError`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from .errors import TargetBroken, TargetError, classify
from .settings import Settings

__all__ = ["CONTROL_TIMEOUT", "Target", "open_target"]

LOGGER = logging.getLogger("foreman.target")

#: Seconds foreman's own calls (/api/tags, /api/ps) may take to answer.
CONTROL_TIMEOUT = 30.0

#: Pool size: one chat at a time, but embeds and passthrough calls run in
#: parallel; above this they queue for a connection (pool timeout: none, as
#: Ollama itself queues without bound).
LIMITS = httpx.Limits(max_connections=128, max_keepalive_connections=32, keepalive_expiry=30)


class Target:
    """A connection pool to one Ollama server.

    Args:
        client: an :class:`httpx.AsyncClient` whose ``base_url`` is the target.
        url: the target's base URL, for messages.
    """

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: str | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send one request and yield the response with its body still unread.

        Any status is returned as is (Ollama's errors are the client's to see).
        Reads are bounded by the idle timeout between chunks, not by a total
        deadline. Closing the context closes the connection's use; cancelling
        the caller aborts the request, which makes Ollama abort the generation.

        Raises:
            TargetError: connecting, sending or reading the headers failed.
        """
        request = self.client.build_request(
            method, path, content=content, headers=headers, params=params
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise classify(exc, self.url) from exc
        try:
            yield response
        finally:
            await response.aclose()

    async def read(self, response: httpx.Response) -> bytes:
        """The whole body of a response from :meth:`stream`. Raises :class:`TargetError`."""
        try:
            return await response.aread()
        except httpx.HTTPError as exc:
            raise classify(exc, self.url) from exc

    async def chunks(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The body of a response from :meth:`stream`, chunk by chunk as it arrives.

        Raises:
            TargetError: the target went silent past the idle timeout, or the
                connection broke before the body was complete.
        """
        try:
            async for chunk in response.aiter_bytes():
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
            response = await self.client.get(path, timeout=self._control_timeout())
        except httpx.HTTPError as exc:
            raise classify(exc, self.url) from exc
        if response.status_code != 200:
            raise TargetBroken(self.url, f"GET {path} answered {response.status_code}")
        try:
            return response.content, response.json()
        except ValueError as exc:
            raise TargetBroken(self.url, f"GET {path} answered with invalid JSON") from exc

    async def warm(self, model: str) -> None:
        """Load ``model`` and keep it loaded: ``POST /api/embed`` with ``keep_alive: -1``.

        Mirrors Ollama's canonical pre-load call (reference §8): the runner's
        idle duration becomes "forever" (``expires_at`` ≈ 292 years ahead).

        Raises:
            TargetError: transport failure or a non-200 answer (its ``error`` text is kept).
        """
        body = {"model": model, "input": "warm-up", "keep_alive": -1}
        try:
            response = await self.client.post("/api/embed", json=body)
        except httpx.HTTPError as exc:
            raise classify(exc, self.url) from exc
        if response.status_code != 200:
            raise TargetError(
                self.url,
                f"warm-up of {model!r} answered "
                f"{response.status_code}: {_error_text(response.content)}",
            )

    def _control_timeout(self) -> httpx.Timeout:
        connect = self.client.timeout.connect
        return httpx.Timeout(CONTROL_TIMEOUT, connect=connect)


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

    Timeouts: ``connect_timeout`` to connect; ``idle_timeout`` for each read
    and write (so a stream may run for hours as long as chunks keep coming);
    no pool timeout. ``FOREMAN_OLLAMA_TOKEN``, if set, goes out as
    ``Authorization: Bearer``. Proxy variables from the environment are ignored.

    Args:
        settings: foreman's settings.
        transport: replaces the network (tests pass the stand-in's in-process transport).
    """
    headers = {"User-Agent": "foreman"}
    if settings.ollama_token:
        headers["Authorization"] = f"Bearer {settings.ollama_token}"
    timeout = httpx.Timeout(
        connect=settings.connect_timeout,
        read=settings.idle_timeout,
        write=settings.idle_timeout,
        pool=None,
    )
    async with httpx.AsyncClient(
        base_url=settings.ollama_url,
        headers=headers,
        timeout=timeout,
        limits=LIMITS,
        transport=transport,
        trust_env=False,
        follow_redirects=False,
    ) as client:
        yield Target(client, settings.ollama_url)
