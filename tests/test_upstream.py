"""H11Transport against real loopback servers written here on trio and h11 (or raw bytes).

Each server counts the connections it accepts and keeps every request it was
sent, so keep-alive, the pool limit and closing are checked where they show:
at the server. Time-based tests run on ``MockClock``.
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx2
import pytest
import trio
import trio.testing
import trustme

from foreman.backends.ollama.target import Target
from foreman.standins.ollama import StandIn, serve
from foreman.upstream import H11Transport

from .conftest import settings

# --- the servers ----------------------------------------------------------------------------


@dataclass
class Call:
    """One request as a server got it, and the means to answer it."""

    stream: trio.abc.Stream
    conn: h11.Connection
    request: h11.Request
    body: bytes
    connection: int  # which accepted connection it came on: 1, 2, ...

    @property
    def target(self) -> bytes:
        return self.request.target

    async def send(self, *events: Any) -> None:
        await self.stream.send_all(b"".join(self.conn.send(event) or b"" for event in events))

    async def answer(
        self,
        body: bytes = b"",
        *,
        status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None,
        reason: bytes = b"",
    ) -> None:
        head = [*(headers or []), (b"Content-Length", b"%d" % len(body))]
        response = h11.Response(status_code=status, headers=head, reason=reason)
        await self.send(response, h11.Data(data=body), h11.EndOfMessage())

    async def wait_closed(self) -> None:
        """Until the client closes the connection (EOF or reset)."""
        try:
            while await self.stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass


Respond = Callable[[Call], Awaitable[None]]

Test = Callable[..., Awaitable[None]]


def bounded(seconds: float) -> Callable[[Test], Test]:
    """Make a test that hangs fail after ``seconds`` of trio's clock (mock or real)."""

    def decorate(test: Test) -> Test:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            with trio.fail_after(seconds):
                await test(*args, **kwargs)

        return run

    return decorate


async def _next_event(stream: trio.abc.Stream, conn: h11.Connection) -> Any:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await stream.receive_some(65536))
    return event


@dataclass
class Server:
    """An HTTP/1.1 server that hands every request to ``respond``, keeping connections alive."""

    respond: Respond
    accepted: int = 0
    open: int = 0
    peak: int = 0
    calls: list[Call] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)  # set on each request, then renewed

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        number = self.accepted
        self.open += 1
        self.peak = max(self.peak, self.open)
        conn = h11.Connection(h11.SERVER)
        try:
            while isinstance(request := await _next_event(stream, conn), h11.Request):
                body = b""
                while isinstance(event := await _next_event(stream, conn), h11.Data):
                    body += event.data
                call = Call(stream, conn, request, body, number)
                self.calls.append(call)
                self.arrived.set()
                self.arrived = trio.Event()
                await self.respond(call)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            self.open -= 1
            await trio.aclose_forcefully(stream)

    async def wait_calls(self, count: int) -> None:
        while len(self.calls) < count:
            await self.arrived.wait()


async def hello(call: Call) -> None:
    await call.answer(b"hello")


@pytest.fixture
def start(nursery: trio.Nursery) -> Callable[[Respond], Awaitable[tuple[Server, str]]]:
    """Starts a :class:`Server` on 127.0.0.1; returns it and its URL."""

    async def start_server(respond: Respond) -> tuple[Server, str]:
        server = Server(respond)
        serve_tcp = functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
        listeners = await nursery.start(serve_tcp)
        return server, f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"

    return start_server


Start = Callable[[Respond], Awaitable[tuple[Server, str]]]


async def one_part(data: bytes) -> AsyncIterator[bytes]:
    """A request body of one chunk, streamed (so it cannot be sent again)."""
    yield data


def request(url: str, method: str = "GET", path: str = "/", **kwargs: Any) -> httpx2.Request:
    timeout = {"connect": 5.0, "read": None, "write": 5.0, "pool": None}
    timeout.update(kwargs.pop("timeout", {}))
    return httpx2.Request(method, url + path, extensions={"timeout": timeout}, **kwargs)


async def fetch(transport: H11Transport, req: httpx2.Request) -> tuple[httpx2.Response, bytes]:
    """Send, read the whole body as foreman does (``response.stream``), close."""
    response = await transport.handle_async_request(req)
    try:
        body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
    finally:
        await response.aclose()
    return response, body


# --- requests and responses -----------------------------------------------------------------


@bounded(5)
async def test_a_get_and_a_post_round_trip_with_raw_headers_and_reason(start: Start) -> None:
    async def respond(call: Call) -> None:
        headers = [(b"X-Mixed-Case", b"Yes"), (b"content-type", b"text/plain")]
        await call.answer(call.request.method + b" " + call.body, headers=headers, reason=b"Fine")

    server, url = await start(respond)
    async with H11Transport(url) as transport:
        response, body = await fetch(transport, request(url, path="/api/tags?x=1"))
        assert response.status_code == 200
        assert response.extensions == {"http_version": b"HTTP/1.1", "reason_phrase": b"Fine"}
        assert response.headers.raw == [
            (b"X-Mixed-Case", b"Yes"),
            (b"content-type", b"text/plain"),
            (b"Content-Length", b"4"),
        ]
        assert body == b"GET "
        payload = b'{"model": "llama3.2", "input": "x"}'
        response, body = await fetch(
            transport,
            request(url, "POST", "/api/embed", content=payload, headers={"X-Trace": "abc"}),
        )
        assert body == b"POST " + payload
    get, post = server.calls
    assert (get.request.method, get.target) == (b"GET", b"/api/tags?x=1")
    assert (post.request.method, post.target, post.body) == (b"POST", b"/api/embed", payload)
    host = url.removeprefix("http://").encode()
    assert (b"host", host) in post.request.headers
    assert (b"x-trace", b"abc") in post.request.headers
    assert (b"content-length", b"%d" % len(payload)) in post.request.headers


@bounded(5)
async def test_sequential_requests_share_one_connection(start: Start) -> None:
    server, url = await start(hello)
    async with H11Transport(url) as transport:
        for _ in range(5):
            _, body = await fetch(transport, request(url, "POST", content=b"x"))
            assert body == b"hello"
    assert (server.accepted, len(server.calls)) == (1, 5)


@bounded(5)
async def test_a_streamed_body_is_yielded_before_the_rest_is_sent(start: Start) -> None:
    go_on = trio.Event()

    async def respond(call: Call) -> None:
        head = h11.Response(status_code=200, headers=[(b"Transfer-Encoding", b"chunked")])
        await call.send(head, h11.Data(data=b'{"n": 1}\n'))
        await go_on.wait()
        await call.send(h11.Data(data=b'{"n": 2}\n'), h11.EndOfMessage())

    server, url = await start(respond)
    async with H11Transport(url) as transport:
        response = await transport.handle_async_request(request(url, "POST", content=b"{}"))
        chunks = aiter(response.stream)  # type: ignore[arg-type]
        assert await anext(chunks) == b'{"n": 1}\n'
        assert not go_on.is_set()
        go_on.set()
        assert await anext(chunks) == b'{"n": 2}\n'
        with pytest.raises(StopAsyncIteration):
            await anext(chunks)
        await response.aclose()
        assert response.headers["transfer-encoding"] == "chunked"
        await fetch(transport, request(url, "POST", content=b"{}"))
    assert server.accepted == 1  # a chunked body read to its end keeps the connection


@bounded(5)
async def test_http_chunks_that_arrive_together_are_one_piece(start: Start) -> None:
    """A burst of NDJSON lines read at once goes on as one piece (one write to the client),
    the end of the body included."""

    async def respond(call: Call) -> None:
        head = h11.Response(status_code=200, headers=[(b"Transfer-Encoding", b"chunked")])
        lines = [h11.Data(data=b'{"n": %d}\n' % n) for n in range(3)]
        await call.send(head, *lines, h11.EndOfMessage())  # one write

    server, url = await start(respond)
    async with H11Transport(url) as transport:
        for _ in range(2):
            response = await transport.handle_async_request(request(url))
            pieces = [piece async for piece in response.stream]  # type: ignore[union-attr]
            await response.aclose()
            assert pieces == [b'{"n": 0}\n{"n": 1}\n{"n": 2}\n']
    assert server.accepted == 1  # and the connection went back to the pool


@bounded(5)
async def test_chunked_and_content_length_bodies_arrive_whole(start: Start) -> None:
    big = bytes(range(256)) * 800  # 200 KiB, several reads

    async def respond(call: Call) -> None:
        if call.target == b"/chunked":
            head = h11.Response(status_code=200, headers=[(b"Transfer-Encoding", b"chunked")])
            parts = [h11.Data(data=big[i : i + 70_000]) for i in range(0, len(big), 70_000)]
            await call.send(head, *parts, h11.EndOfMessage())
        else:
            await call.answer(big)

    server, url = await start(respond)
    async with H11Transport(url) as transport:
        for path in ("/chunked", "/length", "/chunked"):
            response, body = await fetch(transport, request(url, path=path))
            assert body == big
    assert server.accepted == 1


@bounded(5)
async def test_an_async_iterable_request_body_arrives_whole(start: Start) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b'{"model": ', b"", b'"llama3.2"', b"}"):
            await trio.lowlevel.checkpoint()
            yield part

    server, url = await start(hello)
    async with H11Transport(url) as transport:
        req = request(url, "POST", "/api/chat", content=parts())
        _, body = await fetch(transport, req)
        assert body == b"hello"
        await fetch(transport, request(url))
    (call, _) = server.calls
    assert call.body == b'{"model": "llama3.2"}'
    assert (b"transfer-encoding", b"chunked") in call.request.headers
    assert server.accepted == 1


@bounded(5)
async def test_informational_responses_are_skipped(start: Start) -> None:
    async def respond(call: Call) -> None:
        await call.stream.send_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
        )

    _, url = await start(respond)
    async with H11Transport(url) as transport:
        response, body = await fetch(transport, request(url, "POST", content=b"x"))
    assert (response.status_code, body) == (201, b"ok")


@bounded(5)
async def test_a_request_for_another_origin_is_refused(start: Start) -> None:
    server, url = await start(hello)
    async with H11Transport(url) as transport:
        for other in ("http://127.0.0.2:1/", "https" + url.removeprefix("http") + "/"):
            with pytest.raises(httpx2.UnsupportedProtocol):
                await transport.handle_async_request(httpx2.Request("GET", other))
        await fetch(transport, request(url))  # the refusals took no slot
    assert server.accepted == 1
    with pytest.raises(httpx2.UnsupportedProtocol):
        H11Transport("ftp://127.0.0.1:21")


@bounded(5)
async def test_https_with_a_given_context(start: Start, nursery: trio.Nursery) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    server = Server(hello)
    serve_tls = functools.partial(
        trio.serve_ssl_over_tcp, server.handle, 0, server_context, host="127.0.0.1"
    )
    listeners = await nursery.start(serve_tls)
    url = f"https://127.0.0.1:{listeners[0].transport_listener.socket.getsockname()[1]}"
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    async with H11Transport(url, ssl_context=client_context) as transport:
        for _ in range(2):
            _, body = await fetch(transport, request(url))
            assert body == b"hello"
    assert server.accepted == 1
    async with H11Transport(url) as untrusting:  # the default context knows no such CA
        with pytest.raises(httpx2.ConnectError):
            await untrusting.handle_async_request(request(url))


# --- the pool -------------------------------------------------------------------------------


@bounded(5)
async def test_the_pool_limit_holds_requests_until_a_connection_is_free(start: Start) -> None:
    release = trio.Event()

    async def respond(call: Call) -> None:
        await release.wait()
        await call.answer(call.target)

    server, url = await start(respond)
    bodies: list[bytes] = []
    async with H11Transport(url, max_connections=2) as transport:

        async def one(path: str) -> None:
            bodies.append((await fetch(transport, request(url, path=path)))[1])

        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(one, f"/{n}")
            await server.wait_calls(2)
            await trio.testing.wait_all_tasks_blocked()
            assert (len(server.calls), server.open) == (2, 2)
            release.set()
    assert sorted(bodies) == [b"/0", b"/1", b"/2", b"/3"]
    assert (server.peak, server.accepted) == (2, 2)


@bounded(5)
async def test_idle_connections_are_reused_most_recent_first(start: Start) -> None:
    gates = {b"/a": trio.Event(), b"/b": trio.Event()}

    async def respond(call: Call) -> None:
        if call.target in gates:
            await gates[call.target].wait()
        await call.answer(b"")

    server, url = await start(respond)
    async with H11Transport(url) as transport:
        async with trio.open_nursery() as nursery:
            for path in ("/a", "/b"):
                nursery.start_soon(fetch, transport, request(url, path=path))
            await server.wait_calls(2)
            for gate in gates.values():  # /a is done first, /b last
                gate.set()
                await trio.testing.wait_all_tasks_blocked()
        await fetch(transport, request(url, path="/c"))
    by_target = {call.target: call.connection for call in server.calls}
    assert by_target[b"/a"] != by_target[b"/b"]
    assert by_target[b"/c"] == by_target[b"/b"]


@bounded(60)
async def test_a_pool_timeout_is_honoured(start: Start, autojump_clock: trio.abc.Clock) -> None:
    release = trio.Event()

    async def respond(call: Call) -> None:
        await release.wait()
        await call.answer(b"")

    server, url = await start(respond)
    async with H11Transport(url, max_connections=1) as transport, trio.open_nursery() as nursery:
        nursery.start_soon(fetch, transport, request(url))
        await server.wait_calls(1)
        began = trio.current_time()
        with pytest.raises(httpx2.PoolTimeout):
            await transport.handle_async_request(request(url, timeout={"pool": 3.0}))
        assert trio.current_time() - began == pytest.approx(3.0)
        release.set()


@bounded(60)
async def test_an_idle_connection_past_its_expiry_is_not_reused(
    start: Start, autojump_clock: trio.abc.Clock
) -> None:
    server, url = await start(hello)
    async with H11Transport(url, keepalive_expiry=10.0) as transport:
        await fetch(transport, request(url))
        await trio.sleep(9.0)
        await fetch(transport, request(url))
        assert server.accepted == 1
        await trio.sleep(11.0)
        await fetch(transport, request(url))
        assert server.accepted == 2
        await trio.testing.wait_all_tasks_blocked()
        assert server.open == 1  # the expired one was closed, not only left aside


@bounded(5)
async def test_a_connection_the_server_closed_while_idle_is_replaced(start: Start) -> None:
    async def respond(call: Call) -> None:
        await call.answer(b"once")
        await call.stream.aclose()  # without Connection: close, as a server's idle timeout

    server, url = await start(respond)
    async with H11Transport(url) as transport:
        await fetch(transport, request(url))
        while server.open:
            await trio.testing.wait_all_tasks_blocked()
        _, body = await fetch(transport, request(url, "POST", content=one_part(b"x")))
    assert body == b"once"  # a streamed body: no retry, the stale connection was not taken
    assert server.accepted == 2
    assert server.calls[-1].body == b"x"


@bounded(5)
async def test_a_reused_connection_that_fails_before_any_answer_is_retried_once(
    start: Start,
) -> None:
    """A GET is sent again on a new connection; a POST the target read whole is not (it
    may have run it: a second chat, a second delete)."""

    async def respond(call: Call) -> None:
        if len(server.calls) not in (2, 5):  # these requests find the server closing
            await call.answer(b"ok")

    server, url = await start(respond)
    async with H11Transport(url) as transport:
        await fetch(transport, request(url))
        response, body = await fetch(transport, request(url))
        assert (response.status_code, body) == (200, b"ok")
        await fetch(transport, request(url))
        with pytest.raises(httpx2.RemoteProtocolError, match="without sending a response"):
            await transport.handle_async_request(request(url, "POST", content=b"once"))
    assert [(call.connection, call.request.method) for call in server.calls] == [
        (1, b"GET"),
        (1, b"GET"),
        (2, b"GET"),
        (2, b"GET"),
        (2, b"POST"),
    ]


@bounded(5)
async def test_a_streamed_body_is_not_retried(start: Start) -> None:
    async def respond(call: Call) -> None:
        if len(server.calls) != 2:
            await call.answer(b"ok")

    async def parts() -> AsyncIterator[bytes]:
        yield b"once"

    server, url = await start(respond)
    async with H11Transport(url) as transport:
        await fetch(transport, request(url))
        with pytest.raises(httpx2.RemoteProtocolError, match="without sending a response"):
            await transport.handle_async_request(request(url, "POST", content=parts()))
        await fetch(transport, request(url))  # the slot was freed
    assert server.accepted == 2


@bounded(5)
async def test_a_server_connection_close_is_honoured(start: Start) -> None:
    async def respond(call: Call) -> None:
        await call.answer(b"bye", headers=[(b"Connection", b"close")])

    server, url = await start(respond)
    async with H11Transport(url) as transport:
        for _ in range(2):
            _, body = await fetch(transport, request(url))
            assert body == b"bye"
    assert server.accepted == 2


@bounded(5)
async def test_bytes_after_a_complete_response_keep_the_connection_from_reuse(
    start: Start,
) -> None:
    async def respond(call: Call) -> None:
        await call.stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200")
        await call.wait_closed()

    server, url = await start(respond)
    async with H11Transport(url) as transport:
        for _ in range(2):
            _, body = await fetch(transport, request(url))
            assert body == b"ok"
    assert server.accepted == 2


@bounded(5)
async def test_closing_the_transport_closes_idle_connections(start: Start) -> None:
    server, url = await start(hello)
    transport = H11Transport(url)
    await fetch(transport, request(url))
    await transport.aclose()
    while server.open:
        await trio.testing.wait_all_tasks_blocked()
    await fetch(transport, request(url))  # still works, without keeping the connection
    while server.open:
        await trio.testing.wait_all_tasks_blocked()
    assert server.accepted == 2


# --- closing early and cancelling -----------------------------------------------------------


def hold_open(hung_up: trio.Event) -> Respond:
    """Answers one line of a chunked body, then waits for the client to go."""

    async def respond(call: Call) -> None:
        if call.target == b"/hold":
            head = h11.Response(status_code=200, headers=[(b"Transfer-Encoding", b"chunked")])
            await call.send(head, h11.Data(data=b"line 1\n"))
            await call.wait_closed()
            hung_up.set()
        else:
            await call.answer(b"next")

    return respond


@bounded(5)
async def test_cancelling_the_reader_mid_body_closes_the_connection(start: Start) -> None:
    hung_up = trio.Event()
    server, url = await start(hold_open(hung_up))
    async with H11Transport(url, max_connections=1) as transport:
        with trio.CancelScope() as scope:
            response = await transport.handle_async_request(request(url, path="/hold"))
            chunks = aiter(response.stream)  # type: ignore[arg-type]
            assert await anext(chunks) == b"line 1\n"
            scope.cancel()
            await anext(chunks)
        assert scope.cancelled_caught
        await hung_up.wait()  # the server saw the connection end
        _, body = await fetch(transport, request(url))  # the one slot is free again
        assert body == b"next"
        await response.aclose()  # a second close does nothing
        await response.aclose()
    assert server.accepted == 2


@bounded(5)
async def test_cancelling_while_waiting_for_the_head_closes_the_connection(start: Start) -> None:
    hung_up = trio.Event()

    async def respond(call: Call) -> None:
        if call.target == b"/never":
            await call.wait_closed()
            hung_up.set()
        else:
            await call.answer(b"next")

    server, url = await start(respond)
    async with H11Transport(url, max_connections=1) as transport:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.handle_async_request, request(url, path="/never"))
            await server.wait_calls(1)
            nursery.cancel_scope.cancel()
        await hung_up.wait()
        _, body = await fetch(transport, request(url))
        assert body == b"next"
    assert server.accepted == 2


@bounded(5)
async def test_a_response_closed_before_its_end_closes_the_connection(start: Start) -> None:
    hung_up = trio.Event()
    server, url = await start(hold_open(hung_up))
    async with H11Transport(url) as transport:
        response = await transport.handle_async_request(request(url, path="/hold"))
        await response.aclose()
        await hung_up.wait()
        _, body = await fetch(transport, request(url))
        assert body == b"next"
        with pytest.raises(httpx2.StreamClosed):  # not an empty body: it was cut short
            await anext(aiter(response.stream))  # type: ignore[arg-type]
    assert server.accepted == 2


# --- errors ---------------------------------------------------------------------------------


@bounded(5)
async def test_a_refused_connection_is_a_connect_error() -> None:
    with trio.socket.socket() as sock:  # bound, not listening: connections are refused
        await sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with H11Transport(url, max_connections=1) as transport:
            for _ in range(2):  # the failed attempt gave its slot back
                with pytest.raises(httpx2.ConnectError):
                    await transport.handle_async_request(request(url))


@bounded(60)
async def test_a_slow_connect_is_a_connect_timeout(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    async def never(*args: Any, **kwargs: Any) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError

    monkeypatch.setattr(trio, "open_tcp_stream", never)
    url = "http://127.0.0.1:9"
    async with H11Transport(url, max_connections=1) as transport:
        began = trio.current_time()
        for _ in range(2):
            with pytest.raises(httpx2.ConnectTimeout):
                await transport.handle_async_request(request(url, timeout={"connect": 7.0}))
        assert trio.current_time() - began == pytest.approx(14.0)


@bounded(60)
async def test_a_server_that_stops_reading_is_a_write_timeout(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    async def deaf(stream: trio.SocketStream) -> None:  # accepts, never reads
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, deaf, 0, host="127.0.0.1"))
    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    async with H11Transport(url) as transport:
        big = b"x" * (64 << 20)  # more than the kernel buffers on both sides
        began = trio.current_time()
        with pytest.raises(httpx2.WriteTimeout):
            await transport.handle_async_request(
                request(url, "POST", content=big, timeout={"write": 5.0})
            )
        assert trio.current_time() - began == pytest.approx(5.0)
        closed = trio.Event()

        async def endless() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 65536
            finally:
                closed.set()

        with pytest.raises(httpx2.WriteTimeout):
            await transport.handle_async_request(
                request(url, "POST", content=endless(), timeout={"write": 5.0})
            )
        assert closed.is_set()  # the half-sent body's generator was closed, not left to the GC


@bounded(5)
async def test_a_server_closing_mid_body_is_a_read_error(start: Start) -> None:
    async def respond(call: Call) -> None:
        if call.target == b"/cut":
            response = h11.Response(status_code=200, headers=[(b"Content-Length", b"100")])
            await call.send(response, h11.Data(data=b"0123456789"))
            await call.stream.aclose()
        else:
            await call.answer(b"fine")

    server, url = await start(respond)
    async with H11Transport(url, max_connections=1) as transport:
        response = await transport.handle_async_request(request(url, path="/cut"))
        got = b""
        with pytest.raises((httpx2.ReadError, httpx2.RemoteProtocolError)):
            async for chunk in response.stream:  # type: ignore[union-attr]
                got += chunk
        assert got == b"0123456789"
        await response.aclose()
        _, body = await fetch(transport, request(url))
        assert body == b"fine"
    assert server.accepted == 2


@bounded(5)
async def test_garbage_from_the_server_is_a_remote_protocol_error(start: Start) -> None:
    async def respond(call: Call) -> None:
        await call.stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    _, url = await start(respond)
    async with H11Transport(url, max_connections=1) as transport:
        for _ in range(2):  # the slot was given back
            with pytest.raises(httpx2.RemoteProtocolError):
                await transport.handle_async_request(request(url))


@bounded(5)
async def test_a_body_shorter_than_its_content_length_is_a_local_protocol_error(
    start: Start,
) -> None:
    server, url = await start(hello)
    async with H11Transport(url, max_connections=1) as transport:
        short = httpx2.Request(
            "POST", url + "/", headers={"Content-Length": "10"}, stream=httpx2.ByteStream(b"abc")
        )
        with pytest.raises(httpx2.LocalProtocolError):
            await transport.handle_async_request(short)
        _, body = await fetch(transport, request(url, "POST", content=b"abc"))
        assert body == b"hello"
    assert [call.body for call in server.calls] == [b"abc"]


@bounded(5)
async def test_a_server_closing_without_an_answer_is_a_remote_protocol_error(
    start: Start,
) -> None:
    async def respond(call: Call) -> None:
        pass  # closes the fresh connection: nothing to retry

    _, url = await start(respond)
    async with H11Transport(url) as transport:
        with pytest.raises(httpx2.RemoteProtocolError, match="without sending a response"):
            await transport.handle_async_request(request(url))


# --- as foreman's transport -----------------------------------------------------------------


@bounded(5)
async def test_it_carries_foremans_target_to_the_stand_in(nursery: trio.Nursery) -> None:
    standin = StandIn(token_rate=1000.0)
    urls: list[str] = await nursery.start(functools.partial(serve, standin, "127.0.0.1:0"))
    async with H11Transport(urls[0]) as transport:
        target = Target(transport, settings(ollama_url=urls[0]))
        _, tags = await target.get_json("/api/tags")
        assert len(tags["models"]) == 3
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        chat = target.request(
            "POST",
            b"/api/chat",
            headers=[(b"content-type", b"application/json")],
            content=json.dumps(body).encode(),
        )
        response = await target.send(chat, header_timeout=5.0)
        try:
            lines = b"".join([chunk async for chunk in target.chunks(response)])
        finally:
            await response.aclose()
        assert json.loads(lines.splitlines()[-1])["done"] is True
        _, ps = await target.get_json("/api/ps")
        assert [model["name"] for model in ps["models"]] == ["llama3.2:latest"]
    assert standin.stats()["chats_total"] == 1
