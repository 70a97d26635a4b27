"""foreman's HTTP/1.1 server: trio + h11, one task per connection, the ASGI app called in it.

hypercorn answering a fixed body with no proxying at all served about 1,100 requests a
second on the development machine, where a trio + h11 loop served 6,000: its task per
request, keep-alive timer task, locks and cancel scopes around every write cost more than
the whole relay is allowed (``docs/adr/0015-own-http-server.md``). This server keeps what
foreman needs of an ASGI server and nothing else:

* one task per connection reads requests with h11 and calls the ASGI app in that same
  task; ``receive()`` and ``send()`` read and write the socket directly, so a response body
  goes out in the ``send()`` that carries it, and the status line waits for the first body
  message so that a small answer is one write;
* ``receive()`` after the request body waits for the client to go away and then returns
  ``http.disconnect`` (ASGI's way to say so); it may run in another task (foreman's data
  plane watches from one), and the connection takes the socket back once the answer is
  complete;
* after the answer, an unread request body is read and dropped up to 256 KiB, as Go's
  ``net/http`` (so Ollama) does, so that the connection stays alive;
* ``Expect: 100-continue`` gets its ``100 Continue`` when the app first reads the body;
* status lines carry the standard reason phrase (``HTTP/1.1 200 OK``) and every answer a
  ``Date`` header, as Ollama's do; no ``Server`` header;
* a keep-alive connection may stay idle :data:`KEEP_ALIVE` seconds (nginx's default);
  a malformed request gets 400 (431 for a head over 64 KiB) and the connection closes;
* HTTPS with ``tls_cert``/``tls_key``; HTTP/2 and WebSocket are not spoken (Ollama speaks
  neither);
* the ASGI lifespan protocol runs around serving (startup before listening, shutdown
  after the last connection);
* graceful shutdown: once ``shutdown_trigger`` returns, the listeners close, idle
  connections close, answers in progress get ``Connection: close`` and finish, and after
  ``graceful_timeout`` seconds whatever is left is cancelled.
"""

from __future__ import annotations

import http
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from functools import partial
from typing import Any
from urllib.parse import unquote

import h11
import trio

from .dataplane.bodies import DRAIN_LIMIT

__all__ = ["KEEP_ALIVE", "serve", "tls_context"]

LOGGER = logging.getLogger("foreman.server")

#: Seconds a keep-alive connection may wait for its next request (head complete).
KEEP_ALIVE = 75.0
#: Bytes of a request head (request line and headers) beyond which the answer is 431
#: (checked while the head is incomplete, so a head that arrives whole may be larger).
MAX_HEAD = 64 * 1024
#: Seconds a connection closed with request bytes unread keeps reading them (see _linger).
LINGER = 0.5
#: Bytes read from a socket at a time.
READ_SIZE = 64 * 1024

_DISCONNECT = {"type": "http.disconnect"}
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError)


class _Date:
    """The ``Date`` header value, made once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True).encode()
        return cls.value


class _Server:
    """What the connections share: the app, the TLS context and the draining state."""

    def __init__(self, app: Any, scheme: str, keep_alive: float) -> None:
        self.app = app
        self.scheme = scheme
        self.keep_alive = keep_alive
        self.draining = False
        self.idle: set[trio.CancelScope] = set()  # connections waiting for a request
        self.connections = 0
        self.all_closed = trio.Event()

    def drain(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their answer."""
        self.draining = True
        for scope in self.idle:
            scope.cancel()
        if not self.connections:
            self.all_closed.set()

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until it closes (the task ``trio.serve_listeners`` starts)."""
        self.connections += 1
        try:
            await _Connection(self, stream).run()
        except Exception:  # a bug here must not take the other connections down
            LOGGER.exception("a connection failed")
        finally:
            self.connections -= 1
            if self.draining and not self.connections:
                self.all_closed.set()


class _Connection:
    """One client connection: requests one after another, each answered by the app."""

    def __init__(self, server: _Server, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.client, self.sockname = _addresses(stream)
        self.reader: trio.CancelScope | None = None  # a receive() reading in another task
        self.reader_done = trio.Event()
        self.broken = False  # the client went away, or a write failed
        self.head: h11.Response | None = None  # the status line, sent with the first body
        self.method = b""
        self.expecting = False  # the client waits for 100 Continue before its body
        self.complete = False  # the app's answer is wholly sent
        self.requests = 0  # requests answered: the current one's number

    async def run(self) -> None:
        try:
            while True:
                request = await self._next_request()
                if request is None:
                    break
                await self._answer(request)
                if not await self._ready_for_next():
                    break
            if not self.broken and self.conn.their_state in (h11.SEND_BODY, h11.ERROR):
                await self._linger()
        except _CLOSED:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    async def _linger(self) -> None:
        """Before closing while the client may still be sending: stop writing, then read
        and drop what comes for up to :data:`LINGER` seconds, so that the client reads the
        answer before the reset that unread bytes cause (Go's net/http waits 500 ms too)."""
        if isinstance(self.stream, trio.SocketStream):
            with trio.move_on_after(LINGER):
                await self.stream.send_eof()
                while await self.stream.receive_some(READ_SIZE):
                    pass

    async def _next_request(self) -> h11.Request | None:
        """The next request's head, or None: the client closed, was idle too long, or the
        server drains. A malformed request is answered with 400 or 431 here."""
        server = self.server
        if server.draining:
            return None
        with trio.CancelScope(deadline=trio.current_time() + server.keep_alive) as idle:
            server.idle.add(idle)
            try:
                event = await self._event()
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc)
                return None
            finally:
                server.idle.discard(idle)
        if idle.cancelled_caught or not isinstance(event, h11.Request):
            return None  # timed out, drained, closed (ConnectionClosed), or a bad request
        return event

    async def _event(self) -> Any:
        """The next h11 event, reading the socket as needed."""
        conn = self.conn
        while (event := conn.next_event()) is h11.NEED_DATA:
            data = b"" if self.broken else await self.stream.receive_some(READ_SIZE)
            conn.receive_data(data)
        return event

    async def _refuse(self, exc: h11.RemoteProtocolError) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = exc.error_status_hint
        body = b'{"error":"%s"}' % _REASONS.get(status, b"bad request").lower()
        head = h11.Response(
            status_code=status,
            headers=[
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (b"connection", b"close"),
                (b"date", _Date.now()),
            ],
            reason=_REASONS.get(status, b""),
        )
        data = self.conn.send(head) + self.conn.send(h11.Data(data=body))
        try:
            await self.stream.send_all(data + self.conn.send(h11.EndOfMessage()))
        except (*_CLOSED, h11.LocalProtocolError):
            pass

    async def _answer(self, request: h11.Request) -> None:
        """Call the app for ``request``; send what it sends."""
        self.head, self.complete, self.method = None, False, request.method
        self.expecting = self.conn.they_are_waiting_for_100_continue
        target = request.target
        raw_path, _, query = target.partition(b"?")
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": request.http_version.decode(),
            "method": request.method.decode(),
            "scheme": self.server.scheme,
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": list(request.headers),
            "client": self.client,
            "server": self.sockname,
            "extensions": {},
        }
        try:
            await self.server.app(scope, partial(self._receive, self.requests), self._send)
        except Exception:
            LOGGER.exception("the app failed on %s %s", scope["method"], scope["path"])
            if self.conn.our_state is h11.SEND_RESPONSE and not self.broken:
                self.head = None  # nothing is on the wire yet: a 500 instead
                await self._send_error()
        finally:
            self.requests += 1  # a receive() of this request's, still to come, is too late
        if not self.complete:  # the answer was cut short: the connection cannot go on
            if self.head is not None:  # the status line at least, as the app sent it
                head, self.head = self.head, None
                await self._write(self.conn.send(head))
            self.broken = True

    async def _send_error(self) -> None:
        body = b'{"error":"internal error"}'
        headers = [
            (b"content-type", b"application/json; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        await self._send({"type": "http.response.start", "status": 500, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    async def _receive(self, request: int) -> dict[str, Any]:
        """ASGI ``receive`` for the ``request``-th request: the body as it comes, then
        ``http.disconnect`` once the client goes away (or the answer is complete and the
        connection takes the socket back, or the app has returned)."""
        if request != self.requests:
            return _DISCONNECT
        conn = self.conn
        if conn.they_are_waiting_for_100_continue:
            info = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            self.expecting = False
            await self._write(conn.send(info))
        if conn.their_state is h11.SEND_BODY and not self.broken:
            try:
                event = await self._event()
            except (h11.RemoteProtocolError, *_CLOSED):
                self.broken = True
                return _DISCONNECT
            if isinstance(event, h11.Data):
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            if isinstance(event, h11.EndOfMessage):
                return {"type": "http.request", "body": b"", "more_body": False}
            self.broken = True  # ConnectionClosed before the body's end
            return _DISCONNECT
        await self._wait_for_disconnect()
        return _DISCONNECT

    async def _wait_for_disconnect(self) -> None:
        """Wait until the client closes the connection (or the answer is complete).

        Bytes that come instead are a pipelined next request: they are kept for later,
        and the client is taken to stay (it may half-close after its last request; Go's
        net/http reads the same way)."""
        if self.broken or self.complete:
            return
        with trio.CancelScope() as self.reader:
            self.reader_done = trio.Event()
            try:
                if not self.conn.trailing_data[0]:  # no next request read yet
                    data = await self.stream.receive_some(READ_SIZE)
                    if not data:
                        self.broken = True
                        return
                    self.conn.receive_data(data)
                await trio.sleep_forever()  # a next request came: wait for the answer's end
            except (*_CLOSED, OSError):
                self.broken = True
            finally:
                self.reader = None
                self.reader_done.set()

    async def _send(self, message: dict[str, Any]) -> None:
        """ASGI ``send``. After the client went away, what is sent is dropped (the app
        learns of it from ``receive()``)."""
        kind = message["type"]
        if kind == "http.response.start":
            headers = [*message.get("headers", ()), (b"date", _Date.now())]
            if self.server.draining:
                headers.append((b"connection", b"close"))
            status = message["status"]
            self.head = h11.Response(
                status_code=status, headers=headers, reason=_REASONS.get(status, b"")
            )
            return
        if kind != "http.response.body" or self.complete:
            return
        conn, data = self.conn, b""
        if self.head is not None:
            data, self.head = conn.send(self.head), None
        body = message.get("body", b"")
        if body and self.method != b"HEAD":
            data += conn.send(h11.Data(data=body))
        if not message.get("more_body", False):
            self.complete = True
            data += conn.send(h11.EndOfMessage())
            if self.reader is not None:  # a receive() waiting: it gets http.disconnect now
                self.reader.cancel()
        if data:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            await self.stream.send_all(data)
        except _CLOSED:
            self.broken = True

    async def _ready_for_next(self) -> bool:
        """After an answer: take the socket back, read what is left of the body (up to
        :data:`DRAIN_LIMIT`), and start the next cycle if the connection can go on."""
        if self.reader is not None:  # a receive() still waiting in another task
            self.reader.cancel()
            await self.reader_done.wait()
        conn = self.conn
        if self.broken or conn.our_state is not h11.DONE:
            return False
        if conn.their_state is h11.SEND_BODY and self.expecting:
            return False  # the client waits for a 100 Continue it will not get: no body comes
        drained = 0
        with trio.move_on_after(self.server.keep_alive):
            while conn.their_state is h11.SEND_BODY and drained <= DRAIN_LIMIT:
                try:
                    event = await self._event()
                except h11.RemoteProtocolError:
                    return False
                if isinstance(event, h11.Data):
                    drained += len(event.data)
                elif not isinstance(event, h11.EndOfMessage):
                    return False
        if conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        return True


def _addresses(stream: trio.abc.Stream) -> tuple[Any, Any]:
    """The ASGI ``client`` and ``server`` of a connection: ``(host, port)`` each."""
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    sock = getattr(inner, "socket", None)
    if sock is None:
        return None, None
    try:
        return tuple(sock.getpeername()[:2]), tuple(sock.getsockname()[:2])
    except OSError:
        return None, None


async def _lifespan(app: Any, nursery: trio.Nursery) -> Callable[[], Awaitable[None]]:
    """Run the app's lifespan startup; return the coroutine function that shuts it down.

    An app that does not speak the lifespan protocol (it raises, or returns) is served
    anyway, as ASGI servers do. A ``lifespan.startup.failed`` raises RuntimeError.
    """
    to_app, app_inbox = trio.open_memory_channel[dict[str, Any]](1)
    to_server, server_inbox = trio.open_memory_channel[dict[str, Any]](1)
    unsupported = trio.Event()

    async def run() -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": {}}
        try:
            await app(scope, app_inbox.receive, to_server.send)
        except Exception:
            LOGGER.debug("the app does not speak the lifespan protocol", exc_info=True)
        unsupported.set()
        await trio.sleep_forever()  # keep the channels; cancelled with the server

    async def step(kind: str) -> None:
        await to_app.send({"type": f"lifespan.{kind}"})
        async with trio.open_nursery() as waiting:

            async def answer() -> None:
                reply = await server_inbox.receive()
                if reply["type"] == f"lifespan.{kind}.failed":
                    raise RuntimeError(f"the app's {kind} failed: {reply.get('message', '')}")
                waiting.cancel_scope.cancel()

            async def gone() -> None:
                await unsupported.wait()
                waiting.cancel_scope.cancel()

            waiting.start_soon(answer)
            waiting.start_soon(gone)

    nursery.start_soon(run)
    await step("startup")

    async def shutdown() -> None:
        if not unsupported.is_set():
            await step("shutdown")

    return shutdown


def _url(scheme: str, listener: trio.abc.Listener[Any]) -> str:
    inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    host, port = inner.socket.getsockname()[:2]  # type: ignore[attr-defined]
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context for ``cert`` (PEM chain) and ``key``, HTTP/1.1 by ALPN.

    Raises:
        OSError, ssl.SSLError: the files cannot be read or do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def serve(
    app: Any,
    listen: str,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout: float,
    tls: ssl.SSLContext | None = None,
    keep_alive: float = KEEP_ALIVE,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` on ``listen`` (``HOST:PORT``; port 0 picks a free one).

    Supports ``urls = await nursery.start(partial(serve, app, "127.0.0.1:0", ...))``:
    ``started()`` gets the bound URLs (``["http://127.0.0.1:41234"]``) once the app's
    lifespan startup is done and the sockets listen. Returns once ``shutdown_trigger``
    has returned, every connection has closed (at most ``graceful_timeout`` seconds
    later) and the app's lifespan shutdown is done.

    Args:
        tls: serve HTTPS with this context (:func:`tls_context`).
        keep_alive: seconds an idle keep-alive connection is kept.

    Raises:
        OSError: ``listen`` cannot be bound.
        RuntimeError: the app's lifespan startup failed.
    """
    host, _, port = listen.rpartition(":")
    scheme = "https" if tls else "http"
    server = _Server(app, scheme, keep_alive)
    async with trio.open_nursery() as lifespan_nursery:
        shutdown = await _lifespan(app, lifespan_nursery)
        listeners: list[Any] = await trio.open_tcp_listeners(int(port), host=host.strip("[]"))
        if tls is not None:
            listeners = [trio.SSLListener(ln, tls, https_compatible=True) for ln in listeners]
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(_accept, listener, connections, server.handle)
                task_status.started([_url(scheme, listener) for listener in listeners])
                await shutdown_trigger()
                accepting.cancel_scope.cancel()  # the listeners close: no new connections
            server.drain()
            with trio.move_on_after(graceful_timeout):
                await server.all_closed.wait()
            connections.cancel_scope.cancel()
        await shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def _accept(
    listener: trio.abc.Listener[Any],
    connections: trio.Nursery,
    handle: Callable[[trio.abc.Stream], Awaitable[None]],
) -> None:
    """Accept connections until cancelled, each served by ``handle`` in ``connections``."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # out of file descriptors and the like: wait, go on
                LOGGER.error("cannot accept a connection: %s", exc)
                await trio.sleep(0.1)
                continue
            connections.start_soon(handle, stream)
