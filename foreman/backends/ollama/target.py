"""The Ollama target: one connection pool and the few calls foreman makes itself.

foreman talks to the target through httpx2's own transport
(:class:`httpx2.AsyncHTTPTransport`, httpcore2's pool; :func:`target_transport`), not
through an ``AsyncClient``: the client's layers (cookies, redirects, auth flows, event
hooks, URL merging) do nothing for a relay and cost time on every request
(``docs/adr/0008-fast-data-plane.md``, ``docs/adr/0017-back-on-hypercorn-and-httpx2.md``).
Tests pass the stand-in's in-process transport instead. Every transport failure leaves
this module as a :class:`~foreman.dataplane.errors.TargetError`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import socket
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx2
import trio

from ...dataplane.errors import TargetStatus, TargetTimeout, classify
from ...outbound import policed_transport
from ...settings import Settings

if TYPE_CHECKING:
    import httpcore2

__all__ = ["LIMITS", "RELAYED_HEADERS", "Target", "open_target", "target_transport"]

LOGGER = logging.getLogger("foreman.backends.ollama.target")

#: The pool: one chat at a time, but embeds and other calls run in parallel (Ollama's
#: own default is 4 in parallel per model, 512 queued). A request beyond it waits for a
#: free connection (no pool timeout, as Ollama itself queues without bound). An idle
#: connection is kept 30 s for the next request.
LIMITS = httpx2.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=30.0)

Headers = Sequence[tuple[bytes, bytes]]

#: Response headers relayed to the client. Ollama sets only these besides ``Date``
#: (hypercorn adds its own) and the framing, which is kept as the target chose it:
#: ``Content-Length`` when it sent one, chunked otherwise.
RELAYED_HEADERS = frozenset(
    {b"content-type", b"content-length", b"location", b"retry-after", b"www-authenticate"}
)


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


class _Deadline:
    """``trio.fail_after`` that raises :class:`TargetTimeout` instead of ``TooSlowError``.

    A class, not a ``@contextmanager``: it is entered once per body chunk.
    """

    __slots__ = ("_scope", "_seconds", "_url", "_what")

    def __init__(self, seconds: float | None, url: str, what: str | httpx2.Request) -> None:
        self._seconds, self._url, self._what = seconds, url, what
        self._scope = trio.CancelScope(
            deadline=math.inf if seconds is None else trio.current_time() + seconds
        )

    def __enter__(self) -> None:
        self._scope.__enter__()

    def __exit__(self, *exc_info: Any) -> bool:
        handled = self._scope.__exit__(*exc_info)
        if self._scope.cancelled_caught:
            what = self._what
            if isinstance(what, httpx2.Request):
                what = f"{what.method} {what.url.path}"
            raise TargetTimeout(self._url, f"nothing for {self._seconds:g}s ({what})")
        return handled


class Target:
    """A connection pool to one Ollama server.

    Timeouts are trio deadlines around each wait, so they hold whatever the
    transport and run on trio's clock (``MockClock`` in tests); the transport
    itself only bounds connecting (``connect_timeout``).

    Args:
        transport: the pool (tests pass the stand-in's in-process transport).
        settings: ``ollama_url``, ``ollama_token``, ``connect_timeout``,
            ``idle_timeout`` (seconds the target may stay silent within a body)
            and ``control_timeout`` (foreman's own calls).
    """

    def __init__(self, transport: httpx2.AsyncBaseTransport, settings: Settings) -> None:
        self.transport = transport
        self.url = settings.ollama_url
        self.idle_timeout = settings.idle_timeout
        self.control_timeout = settings.control_timeout
        self._base = httpx2.URL(settings.ollama_url)
        self._prefix = self._base.raw_path.rstrip(b"/")  # a target behind a path prefix
        extra = [(b"user-agent", b"foreman")]
        if settings.ollama_token:
            extra.append((b"authorization", f"Bearer {settings.ollama_token}".encode()))
        self._extra_headers = extra
        # A whole body is written within the caller's deadline for the answer's head; a
        # streamed one (an upload) also within idle_timeout per write.
        self._extensions = {
            "timeout": {
                "connect": settings.connect_timeout,
                "read": None,
                "write": None,
                "pool": None,
            }
        }
        self._streaming_extensions = {
            "timeout": {**self._extensions["timeout"], "write": settings.idle_timeout}
        }

    def request(
        self,
        method: str,
        raw_path: bytes,
        *,
        query: bytes = b"",
        headers: Headers = (),
        content: bytes | AsyncIterable[bytes] | None = None,
    ) -> httpx2.Request:
        """Build a request to the target.

        Args:
            raw_path: the path, already percent-encoded (``/api/chat``).
            query: the query string without its ``?``.
            headers: request headers as bytes; a ``user-agent`` among them replaces
                foreman's own. ``Host`` comes from the target's URL.
            content: the body, whole or as chunks.
        """
        names = {name for name, _ in headers}
        merged = [*headers, *(h for h in self._extra_headers if h[0] not in names)]
        return httpx2.Request(
            method,
            self._url(raw_path + (b"?" + query if query else b"")),
            headers=merged,
            content=content,
            extensions=(
                self._extensions
                if content is None or isinstance(content, bytes)
                else self._streaming_extensions
            ),
        )

    @functools.lru_cache(maxsize=512)  # noqa: B019 (one Target per service, never freed early)
    def _url(self, raw_target: bytes) -> httpx2.URL:
        """The target's URL for a path and query (parsing a URL costs more than a request)."""
        return self._base.copy_with(raw_path=self._prefix + raw_target)

    def _deadline(self, seconds: float | None, what: str | httpx2.Request) -> _Deadline:
        """A ``with`` block that raises :class:`TargetTimeout` after ``seconds`` (None: never)."""
        return _Deadline(seconds, self.url, what)

    async def send(
        self, request: httpx2.Request, *, header_timeout: float | None
    ) -> httpx2.Response:
        """Send ``request`` and return the response once its headers are in.

        The body is left unread: read it with :meth:`chunks` and close the
        response (``await response.aclose()``) when done. Any status is
        returned as is (Ollama's errors are the client's to see). Cancelling
        the caller aborts the request, which makes Ollama abort the generation.

        Args:
            header_timeout: seconds to wait for the status line (None: as long as it takes).

        Raises:
            TargetError: connecting or sending failed, or no answer within ``header_timeout``.
        """
        try:
            with self._deadline(header_timeout, request):
                response = await self.transport.handle_async_request(request)
        except httpx2.HTTPError as exc:
            raise classify(exc, self.url) from exc
        response.request = request  # the client layer would do this
        return response

    async def chunks(self, response: httpx2.Response) -> AsyncIterator[bytes]:
        """The raw body of a response from :meth:`send`, chunk by chunk as it arrives.

        Raises:
            TargetTimeout: the target sent nothing for ``idle_timeout`` seconds.
            TargetError: the connection broke before the body was complete.
        """
        body = aiter(response.stream)  # type: ignore[arg-type]
        what = "body"
        try:
            while True:
                with self._deadline(self.idle_timeout, what):
                    try:
                        chunk = await anext(body)
                    except StopAsyncIteration:
                        return
                if chunk:
                    yield chunk
        except httpx2.HTTPError as exc:
            raise classify(exc, self.url) from exc

    async def read(self, response: httpx2.Response) -> bytes:
        """The whole body of a response from :meth:`send`, within ``idle_timeout`` seconds.

        For bodies known to be small; raises as :meth:`chunks` does.
        """
        try:
            with self._deadline(self.idle_timeout, "body"):
                # the raw stream: Ollama compresses nothing, and relayed bytes stay as sent
                return b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
        except httpx2.HTTPError as exc:
            raise classify(exc, self.url) from exc

    async def fetch(
        self, request: httpx2.Request, *, total_timeout: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send ``request`` and read the whole answer within ``total_timeout`` seconds.

        Returns:
            ``(status, headers, body)``; headers are the ones a client is shown
            (:data:`foreman.dataplane.relay.RELAYED_HEADERS`), as bytes.

        Raises:
            TargetError: transport failure, or no whole answer within ``total_timeout``.
        """
        with self._deadline(total_timeout, request):
            response = await self.send(request, header_timeout=None)
            try:
                body = await self.read(response)
            finally:
                await response.aclose()
        headers = [(k, v) for k, v in response.headers.raw if k.lower() in RELAYED_HEADERS]
        return response.status_code, headers, body

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """One call of foreman's own, bounded by ``control_timeout``: (status, body)."""
        content = None if body is None else json.dumps(body).encode()
        headers = [] if content is None else [(b"content-type", b"application/json")]
        request = self.request(method, path.encode(), headers=headers, content=content)
        status, _, answer = await self.fetch(request, total_timeout=self.control_timeout)
        return status, answer

    async def get_json(self, path: str) -> tuple[bytes, Any]:
        """GET ``path`` and return ``(body bytes, parsed JSON)``.

        Used for ``/api/tags`` and ``/api/ps``, bounded by ``control_timeout``.

        Raises:
            TargetError: transport failure, a timeout, a non-200 status, or a body
                that is not JSON.
        """
        status, body = await self._call("GET", path)
        if status != 200:
            raise TargetStatus(self.url, f"{status} to GET {path}", status)
        try:
            return body, json.loads(body)
        except ValueError as exc:
            raise TargetStatus(self.url, f"invalid JSON to GET {path}", 200) from exc

    async def warm(self, model: str) -> None:
        """Load ``model`` and keep it loaded: ``POST /api/embed`` with ``keep_alive: -1``.

        This is Ollama's own way to pre-load a model: the runner's idle duration
        becomes "forever" (``expires_at`` about 292 years ahead). Bounded by
        ``idle_timeout`` (a load may take minutes).

        Raises:
            TargetError: transport failure or a non-200 answer (its ``error`` text is kept).
        """
        body = {"model": model, "input": "warm-up", "keep_alive": -1}
        request = self.request(
            "POST",
            b"/api/embed",
            headers=[(b"content-type", b"application/json")],
            content=json.dumps(body).encode(),
        )
        status, _, content = await self.fetch(request, total_timeout=self.idle_timeout)
        if status != 200:
            detail = f"{status} to the warm-up of {model!r}: "
            raise TargetStatus(self.url, detail + _error_text(content), status)


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


def target_transport(
    *, network_backend: httpcore2.AsyncNetworkBackend | None = None, **options: Any
) -> httpx2.AsyncHTTPTransport:
    """httpx2's transport to an Ollama server: the pool sized by :data:`LIMITS`, TCP
    keepalive, proxy variables ignored, HTTP/1.1 only.

    A request is never sent twice: httpcore2 retries nothing once a request is written
    (``retries`` counts only connection attempts and stays 0), and it takes no idle
    connection the server has closed, so a POST the target may have run is not repeated.
    Cancelling the caller while a request or its body is open closes that connection,
    which is how Ollama learns to abort the generation.

    Args:
        network_backend: the sockets to use (httpcore2's ``AsyncNetworkBackend``), e.g.
            one that refuses some addresses, handed over by
            :func:`foreman.outbound.policed_transport`; default trio's.
        options: more :class:`httpx2.AsyncHTTPTransport` arguments (``verify``, ``cert``,
            ``local_address``, ...).
    """
    options = {
        "limits": LIMITS,
        "trust_env": False,
        "socket_options": _keepalive_options(),
        **options,
    }
    if network_backend is not None:
        return policed_transport(network_backend, **options)
    return httpx2.AsyncHTTPTransport(**options)


@asynccontextmanager
async def open_target(
    settings: Settings,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
    network_backend: httpcore2.AsyncNetworkBackend | None = None,
) -> AsyncIterator[Target]:
    """Open the connection pool for ``settings.ollama_url`` (:func:`target_transport`).

    Timeouts: ``connect_timeout`` to connect; ``idle_timeout`` between body
    chunks (:meth:`Target.chunks`), so a stream may run for hours as long as
    chunks keep coming; the wait for a status line is the caller's
    (:meth:`Target.send`). ``FOREMAN_OLLAMA_TOKEN``, if set, goes out as
    ``Authorization: Bearer``. Proxy variables from the environment are ignored.
    Connections use TCP keepalive, so a target host that vanishes is noticed.

    Args:
        settings: foreman's settings.
        transport: replaces the network (tests pass the stand-in's in-process transport).
        network_backend: connects for httpx2's pool instead of trio's sockets (an ordinary
            user's backend: :class:`foreman.outbound.PolicyBackend`).
    """
    if transport is None:
        transport = target_transport(network_backend=network_backend)
    async with transport as opened:
        yield Target(opened, settings)
