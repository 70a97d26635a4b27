"""An HTTP/1.1 transport to one origin on trio and h11: the way to the target.

:class:`httpx2.AsyncHTTPTransport` sends through httpcore2's connection pool,
which is general (many origins, HTTP/2, proxies) and pays for it on every
request: it scans its connections, takes locks, shields cancel scopes and
reads the body one event at a time through several layers. In foreman's
profiles that is about 0.6 ms of CPU per request, where a plain h11
keep-alive connection on trio (``scripts/floor_relay.py``) costs about
0.15 ms. foreman talks to one Ollama server only, so :class:`H11Transport`
keeps a plain list of kept-alive h11 connections to that one origin and does
everything in the caller's task, at close to the plain connection's cost.

It is still an :class:`httpx2.AsyncBaseTransport` that takes
:class:`httpx2.Request` and returns :class:`httpx2.Response`, and it raises
httpx2's exception types (:class:`httpx2.ConnectError`,
:class:`httpx2.ReadError`, ...), so :func:`foreman.dataplane.errors.classify` and the
rest of foreman keep one HTTP library, httpx2, shared with the official SDKs
(ADR 0008). Read timeouts are the caller's: :class:`~foreman.backends.ollama.target.Target`
puts a trio deadline around each wait, which holds under ``MockClock``.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import h11
import httpx2
import trio

__all__ = ["H11Transport"]

#: Bytes asked of the socket per read; each read's body bytes are yielded at once.
READ_SIZE = 65536

#: The longest response head accepted, in bytes (httpcore's limit too).
MAX_HEAD = 100 * 1024

SocketOption = tuple[int, int, int]

#: Methods sent again after a reused connection broke with the request written whole
#: (as Go's transport does); others only when the write itself failed.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _Connection:
    """One kept-alive connection: the stream, its socket and its h11 state."""

    __slots__ = ("expires", "h11", "received", "socket", "stream")

    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType) -> None:
        self.stream = stream
        self.socket = sock  # the TCP socket, under TLS too
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.expires = math.inf  # trio time after which it is not reused
        self.received = False  # any byte of the current response yet

    def close(self) -> None:
        """Close the socket at once: no checkpoint, so it works in a cancelled scope.

        A task blocked on the socket gets :class:`trio.ClosedResourceError`; the
        server sees the connection end, which is how Ollama learns that the
        client gave up and aborts the generation.
        """
        self.socket.close()

    async def send(self, data: bytes, seconds: float | None) -> None:
        """Write ``data``, within ``seconds`` (None: no limit) or :class:`httpx2.WriteTimeout`."""
        if seconds is None:
            await self.stream.send_all(data)
            return
        with trio.move_on_after(seconds) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise httpx2.WriteTimeout(f"could not write for {seconds:g}s")

    async def next_event(self, seconds: float | None) -> Any:
        """The next h11 event from the server, reading the socket as needed.

        Raises:
            httpx2.ReadError: the connection broke (reset, closed locally).
            httpx2.ReadTimeout: nothing came for ``seconds`` (None: no limit).
            httpx2.RemoteProtocolError: not HTTP/1.1, or the server closed the
                connection before the response was complete.
        """
        while (event := self.parsed()) is h11.NEED_DATA:
            await self.fill(seconds)
        return event

    def parsed(self) -> Any:
        """The next h11 event of what was read already (``h11.NEED_DATA`` if none)."""
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx2.RemoteProtocolError(str(exc)) from exc

    async def fill(self, seconds: float | None) -> None:
        """Read the socket once and hand the bytes to h11 (raises as :meth:`next_event`)."""
        try:
            if seconds is None:
                data = await self.stream.receive_some(READ_SIZE)
            else:
                with trio.move_on_after(seconds) as scope:
                    data = await self.stream.receive_some(READ_SIZE)
                if scope.cancelled_caught:
                    raise httpx2.ReadTimeout(f"nothing read for {seconds:g}s")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx2.ReadError(_text(exc)) from exc
        if data:
            self.received = True
        elif self.h11.their_state is h11.SEND_RESPONSE:
            raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
        self.h11.receive_data(data)


class _ResponseStream(httpx2.AsyncByteStream):
    """A response body, as soon as it is read: what one read of the socket brings (all
    of it, across HTTP chunks) is one piece, so a burst of NDJSON lines stays one.

    At the end of the body the connection goes back to the pool (if both sides
    may keep it); an error, a cancellation or :meth:`aclose` before the end
    closes it.
    """

    __slots__ = ("_conn", "_done", "_seconds", "_transport")

    def __init__(self, transport: H11Transport, conn: _Connection, seconds: float | None) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._seconds = seconds
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            if self._done:
                raise StopAsyncIteration
            raise httpx2.StreamClosed()
        parts: list[bytes] = []  # the body bytes of one read: chunks that came together
        try:
            while True:
                event = conn.parsed()
                kind = type(event)
                if kind is h11.Data:
                    if event.data:
                        parts.append(bytes(event.data))
                elif event is h11.NEED_DATA:
                    if parts:
                        return b"".join(parts)
                    await conn.fill(self._seconds)
                elif kind is h11.EndOfMessage:
                    break
                else:
                    raise httpx2.RemoteProtocolError(f"unexpected {kind.__name__} in the body")
        except BaseException:
            self._conn = None
            self._transport._discard(conn)
            raise
        self._conn, self._done = None, True
        self._transport._put_back(conn)
        if parts:
            return b"".join(parts)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Close the body; a connection whose body was not read to its end is closed.

        Safe to call twice and inside a cancelled scope (it never checkpoints).
        """
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._transport._discard(conn)


class H11Transport(httpx2.AsyncBaseTransport):
    """A keep-alive pool of HTTP/1.1 connections to one origin, on trio and h11.

    Idle connections are reused most recently used first; one idle for more
    than ``keepalive_expiry`` seconds (trio's clock), or that the server has
    closed meanwhile, is closed instead. Requests beyond ``max_connections``
    wait for one to finish, first come first served, without limit unless the
    request's ``pool`` timeout says otherwise. Everything runs in the caller's
    task: no background tasks, and cancelling the caller at any point closes
    the connection it was using (Ollama then aborts the generation).

    A request that fails on a reused connection before any byte of the answer
    came (the server closed it while idle) is sent once more on a new one, if
    its body is bytes and either it could not be written whole or its method
    is GET, HEAD or OPTIONS: a POST the target may have run is never sent twice
    (Go's transport has the same rule). As httpcore, a failed write is followed
    by reading the answer, for a server that answers early and closes.

    Honours the request's ``timeout`` extension: ``connect`` (seconds to
    connect, TLS included), ``write`` (per write), ``read`` (per read; foreman
    passes None and bounds reads itself), ``pool`` (waiting for a connection).

    Args:
        url: the origin, ``http://host:port`` or ``https://...``; a path is ignored
            (requests carry their full URL).
        max_connections: connections open at once, idle ones included.
        keepalive_expiry: seconds an idle connection is kept for reuse.
        socket_options: ``(level, option, value)`` set on every new socket
            (``TCP_NODELAY`` is trio's default already).
        ssl_context: for ``https``; default :func:`ssl.create_default_context`
            offering ALPN ``http/1.1``.

    Raises:
        httpx2.UnsupportedProtocol: ``url`` is not ``http`` or ``https``.
        ValueError: ``max_connections`` is below 1.
    """

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 64,
        keepalive_expiry: float = 30.0,
        socket_options: list[SocketOption] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        origin = httpx2.URL(url)
        if origin.scheme not in ("http", "https") or not origin.raw_host:
            raise httpx2.UnsupportedProtocol(f"not an http:// or https:// origin: {url!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.url = url
        self._scheme, self._raw_host, self._port = origin.scheme, origin.raw_host, origin.port
        self._host = origin.raw_host.decode("ascii")
        self._connect_port = origin.port or (443 if origin.scheme == "https" else 80)
        self._ssl_context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if ssl_context is None:
                ssl_context = ssl.create_default_context()
                ssl_context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = ssl_context
        self._socket_options = list(socket_options or ())
        self._keepalive_expiry = keepalive_expiry
        self._max = max_connections
        self._in_use = 0  # requests holding a slot, until their response is closed
        self._waiters = trio.lowlevel.ParkingLot()
        self._idle: list[_Connection] = []  # oldest first
        self._closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request`` and return the response as soon as its head is in.

        The body is a stream of the chunks as they are read; the caller reads
        it (``async for chunk in response.stream``) and closes it (``await
        response.aclose()``). ``1xx`` answers are skipped. Headers go out as
        ``request.headers.raw`` (``Host`` and the framing headers included) and
        come back as received, raw bytes.

        Raises:
            httpx2.UnsupportedProtocol: the request is for another origin.
            httpx2.ConnectError: refused, DNS failure, unreachable, TLS handshake failed.
            httpx2.ConnectTimeout: connecting took longer than the ``connect`` timeout.
            httpx2.PoolTimeout: no connection free within the ``pool`` timeout.
            httpx2.WriteError: the connection broke while sending and no answer came.
            httpx2.WriteTimeout: a write took longer than the ``write`` timeout.
            httpx2.ReadError: the connection broke while reading the head.
            httpx2.ReadTimeout: a read took longer than the ``read`` timeout.
            httpx2.RemoteProtocolError: the server's answer is not HTTP/1.1, or it
                closed the connection without one.
            httpx2.LocalProtocolError: the request cannot be sent as HTTP/1.1.
        """
        url = request.url
        if url.raw_host != self._raw_host or url.port != self._port or url.scheme != self._scheme:
            raise httpx2.UnsupportedProtocol(
                f"this transport sends to {self.url} only, not to {url.scheme}://{url.netloc!r}"
            )
        timeouts = request.extensions.get("timeout") or {}
        write_s, read_s = timeouts.get("write"), timeouts.get("read")
        body, chunks = _body(request)
        try:
            head = h11.Request(
                method=request.method, target=url.raw_path, headers=request.headers.raw
            )
        except h11.LocalProtocolError as exc:
            raise httpx2.LocalProtocolError(str(exc)) from exc

        await self._acquire(timeouts.get("pool"))
        conn = None
        try:
            conn = self._take_idle()
            reused = conn is not None
            while True:
                if conn is None:
                    conn = await self._connect(timeouts.get("connect"))
                try:
                    event = await self._exchange(conn, head, body, chunks, write_s, read_s)
                except (httpx2.ReadError, httpx2.WriteError, httpx2.RemoteProtocolError) as exc:
                    unsent = isinstance(exc, httpx2.WriteError)  # the request never got whole
                    if (
                        not reused
                        or chunks is not None
                        or conn.received
                        or not (unsent or request.method in _SAFE_METHODS)
                    ):
                        raise  # the target may have acted on it: never twice
                    conn.close()  # closed by the server while idle: once more on a new one
                    conn, reused = None, False
                else:
                    break
        except BaseException:
            if conn is not None:
                conn.close()
            self._release()
            raise
        return httpx2.Response(
            event.status_code,
            headers=event.headers.raw_items(),
            stream=_ResponseStream(self, conn, read_s),
            extensions={
                "http_version": b"HTTP/" + event.http_version,
                "reason_phrase": event.reason,
            },
        )

    async def aclose(self) -> None:
        """Close every idle connection; those in use close when their responses do.

        The transport still works afterwards, without keeping connections alive.
        """
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # --- the pool -------------------------------------------------------------------------

    async def _acquire(self, seconds: float | None) -> None:
        """Take a slot, waiting (first come first served) while all are in use."""
        if self._in_use < self._max:  # never while anyone waits: _release hands slots over
            self._in_use += 1
            return
        if seconds is None:
            await self._waiters.park()
            return
        with trio.move_on_after(seconds) as scope:
            await self._waiters.park()
        if scope.cancelled_caught:
            raise httpx2.PoolTimeout(f"no free connection to {self.url} within {seconds:g}s")

    def _release(self) -> None:
        """Give the slot to the first waiter, or free it."""
        if self._waiters:
            self._waiters.unpark()
        else:
            self._in_use -= 1

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection still fit for use, or None.

        Closes the expired ones (oldest first) and those the server has closed
        (readable while idle: nothing but EOF can be waiting on them).
        """
        idle = self._idle
        if not idle:
            return None
        now = trio.current_time()
        while idle and idle[0].expires <= now:
            idle.pop(0).close()
        while idle:
            conn = idle.pop()
            if not conn.socket.is_readable():
                return conn
            conn.close()
        return None

    def _put_back(self, conn: _Connection) -> None:
        """A response read to its end: keep its connection if both sides allow, free the slot."""
        state = conn.h11
        if (
            state.our_state is h11.DONE
            and state.their_state is h11.DONE
            and not state.trailing_data[0]  # bytes after the response: not HTTP any more
            and not self._closed
        ):
            state.start_next_cycle()
            conn.expires = trio.current_time() + self._keepalive_expiry
            self._idle.append(conn)
        else:
            conn.close()
        self._release()

    def _discard(self, conn: _Connection) -> None:
        """A response abandoned or broken: close its connection, free the slot."""
        conn.close()
        self._release()

    # --- one connection -------------------------------------------------------------------

    async def _connect(self, seconds: float | None) -> _Connection:
        """A new connection, TLS included, within ``seconds`` (None: no limit)."""
        try:
            if seconds is None:
                return await self._open()
            with trio.move_on_after(seconds):
                return await self._open()
        except OSError as exc:  # refused, DNS, unreachable
            raise httpx2.ConnectError(_text(exc)) from exc
        except trio.BrokenResourceError as exc:  # the TLS handshake failed
            raise httpx2.ConnectError(_text(exc)) from exc
        raise httpx2.ConnectTimeout(f"could not connect to {self.url} within {seconds:g}s")

    async def _open(self) -> _Connection:
        stream = await trio.open_tcp_stream(self._host, self._connect_port)
        try:
            for option in self._socket_options:
                stream.setsockopt(*option)
            if self._ssl_context is None:
                return _Connection(stream, stream.socket)
            tls = trio.SSLStream(
                stream, self._ssl_context, server_hostname=self._host, https_compatible=True
            )
            await tls.do_handshake()
        except BaseException:
            stream.socket.close()
            raise
        return _Connection(tls, stream.socket)

    async def _exchange(
        self,
        conn: _Connection,
        head: h11.Request,
        body: bytes,
        chunks: AsyncIterable[bytes] | None,
        write_s: float | None,
        read_s: float | None,
    ) -> h11.Response:
        """Send the request on ``conn`` and read the response head."""
        state = conn.h11
        conn.received = False
        broken: trio.BrokenResourceError | trio.ClosedResourceError | None = None
        try:
            if chunks is None:  # head and body in one write
                parts = state.send_with_data_passthrough(head) or []
                if body:
                    parts += state.send_with_data_passthrough(h11.Data(data=body)) or []
                parts += state.send_with_data_passthrough(h11.EndOfMessage()) or []
                await conn.send(b"".join(parts), write_s)
            else:
                await conn.send(state.send(head) or b"", write_s)
                parts_in = aiter(chunks)
                try:
                    async for chunk in parts_in:
                        if chunk:
                            await conn.send(state.send(h11.Data(data=chunk)) or b"", write_s)
                except BaseException:
                    if (close := getattr(parts_in, "aclose", None)) is not None:
                        await close()  # an async generator left half read, as httpcore does
                    raise
                await conn.send(state.send(h11.EndOfMessage()) or b"", write_s)
        except h11.LocalProtocolError as exc:
            raise httpx2.LocalProtocolError(str(exc)) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            broken = exc  # the server may have answered, then closed: read the answer
        try:
            while True:
                event = await conn.next_event(read_s)
                if type(event) is h11.Response:
                    return event
                if not isinstance(event, h11.InformationalResponse):
                    name = type(event).__name__
                    raise httpx2.RemoteProtocolError(f"unexpected {name} before the response")
        except (httpx2.ReadError, httpx2.RemoteProtocolError):
            if broken is not None and not conn.received:
                raise httpx2.WriteError(_text(broken)) from broken
            raise


def _body(request: httpx2.Request) -> tuple[bytes, AsyncIterable[bytes] | None]:
    """The request body: ``(bytes, None)`` if whole (replayable), else ``(b"", chunks)``."""
    stream = request.stream
    if isinstance(stream, httpx2.ByteStream):
        try:
            return request.content, None  # httpx2 read it when it built the request
        except httpx2.RequestNotRead:
            return b"".join(stream), None
    if isinstance(stream, AsyncIterable):
        return b"", stream
    return b"".join(stream), None  # a sync stream


def _text(exc: BaseException) -> str:
    """An exception's message, or what caused it, or its type's name."""
    cause = exc.__cause__ or exc.__context__
    return str(exc) or (str(cause) if cause is not None else "") or type(exc).__name__
