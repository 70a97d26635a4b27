"""hypercorn as foreman configures it (:mod:`foreman.serving`), on real loopback sockets.

Each test serves a small ASGI app of its own and talks to it with raw bytes, so what is
asserted is what goes over the wire: status lines, framing, keep-alive, the order of
events between client and app. What foreman's own app adds on top (the drain before an
early answer, ``Connection: close`` while draining) is tested through foreman.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from foreman.dataplane.bodies import DRAIN_LIMIT
from foreman.serving import hypercorn_config, serve
from foreman.standins.ollama import StandIn

from .conftest import open_foreman, settings

App = Callable[[Any, Any, Any], Awaitable[None]]


async def answer(send: Any, body: bytes = b"ok", status: int = 200, **more: Any) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, **more})


async def hello(scope: Any, receive: Any, send: Any) -> None:
    """Reads the body, answers with the method, path and body."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await answer(send, b"%s %s %s" % (scope["method"].encode(), scope["raw_path"], body))


class Served:
    """A running server: its port, and the event that stops it."""

    def __init__(self, port: int, stop: trio.Event) -> None:
        self.port, self.stop = port, stop

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)


def without_lifespan(app: App) -> App:
    """``app``, telling hypercorn that it does not speak the lifespan protocol (by raising:
    an app that returns at once races hypercorn's first lifespan message)."""

    async def served(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan")
        await app(scope, receive, send)

    return served


@asynccontextmanager
async def serving(
    app: App, keep_alive: float | None = None, lifespan: bool = False, **changes: Any
) -> AsyncIterator[Served]:
    stop = trio.Event()
    config = hypercorn_config(settings(listen="127.0.0.1:0", grace=3.0, **changes))
    if keep_alive is not None:
        config.keep_alive_timeout = keep_alive
    served = app if lifespan else without_lifespan(app)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve, served, config, shutdown_trigger=stop.wait))
        yield Served(int(urls[0].rsplit(":", 1)[1]), stop)
        stop.set()


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    """One whole response with a Content-Length body (from ``buffer``, then the socket)."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError(bytes(buffer))
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(buffer) < end + length:
        buffer += await stream.receive_some(65536)
    response = bytes(buffer[: end + length])
    del buffer[: end + length]
    return response


async def closed(stream: trio.SocketStream) -> bool:
    """True when the server closed the connection (within a second)."""
    with trio.move_on_after(1):
        return await stream.receive_some(65536) == b""
    return False


async def test_keep_alive_status_line_date_and_no_server_header() -> None:
    async with serving(hello) as served:
        stream, buffer = await served.connect(), bytearray()
        for n in range(3):
            body = b"n=%d" % n
            await stream.send_all(
                b"POST /api/x?y=1 HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            response = await read_response(stream, buffer)
            head, _, answer = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\ndate: " in head.lower() and b"server:" not in head.lower()
            assert answer == b"POST /api/x " + body
        await stream.aclose()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with serving(hello) as served:
        stream, buffer = await served.connect(), bytearray()
        await stream.send_all(
            b"GET /one HTTP/1.1\r\nhost: a\r\n\r\nGET /two HTTP/1.1\r\nhost: a\r\n\r\n"
        )
        first, second = await read_response(stream, buffer), await read_response(stream, buffer)
        assert first.endswith(b"GET /one ") and second.endswith(b"GET /two ")
        await stream.aclose()


async def test_a_body_chunk_goes_out_before_the_app_has_the_next() -> None:
    go_on = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/x-ndjson")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"n":1}\n', "more_body": True})
        await go_on.wait()
        await send({"type": "http.response.body", "body": b'{"n":2}\n', "more_body": False})

    async with serving(app) as served:
        stream = await served.connect()
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        received = b""
        while b'{"n":1}\n' not in received:
            received += await stream.receive_some(65536)
        assert b"transfer-encoding: chunked" in received.lower() and b'{"n":2}' not in received
        go_on.set()
        while not received.endswith(b"0\r\n\r\n"):
            received += await stream.receive_some(65536)
        assert b'{"n":2}\n' in received
        await stream.aclose()


async def test_a_client_that_goes_away_is_told_by_receive() -> None:
    told = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"line\n", "more_body": True})
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                assert (await receive())["type"] == "http.disconnect"
                told.set()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await trio.sleep_forever()  # the stream goes on until the client leaves

    async with serving(app) as served:
        stream = await served.connect()
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        received = b""
        while b"line" not in received:
            received += await stream.receive_some(65536)
        await stream.aclose()
        with trio.fail_after(2):
            await told.wait()


async def test_receive_after_the_answer_says_disconnect_and_the_connection_goes_on() -> None:
    """As Quart does: a task waits in receive() while the answer is sent, and must end."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        assert (await receive())["type"] == "http.request"
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                assert (await receive())["type"] == "http.disconnect"

            nursery.start_soon(watch)
            await trio.sleep(0.01)
            await answer(send)

    async with serving(app) as served:
        stream, buffer = await served.connect(), bytearray()
        for _ in range(2):
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            with trio.fail_after(2):
                assert (await read_response(stream, buffer)).endswith(b"\r\n\r\nok")
        await stream.aclose()


async def test_a_receive_after_the_app_returned_does_not_take_the_next_request() -> None:
    """A watcher that calls receive() late gets http.disconnect, never the next body."""
    late: list[Any] = []
    returned = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await hello(scope, receive, send)
            late.append(receive)
            returned.set()

    async with serving(app) as served:
        stream, buffer = await served.connect(), bytearray()
        await stream.send_all(b"POST /1 HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\none")
        assert (await read_response(stream, buffer)).endswith(b"POST /1 one")
        await stream.send_all(b"POST /2 HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\n")
        with trio.fail_after(1):
            await returned.wait()
            assert await late[0]() == {"type": "http.disconnect"}
        await stream.send_all(b"two")
        assert (await read_response(stream, buffer)).endswith(b"POST /2 two")
        await stream.aclose()


@pytest.mark.parametrize(("size", "kept"), [(100_000, True), (DRAIN_LIMIT + 100_000, False)])
async def test_foreman_reads_an_unread_body_before_an_early_answer(
    nursery: trio.Nursery, size: int, kept: bool
) -> None:
    """ADR 12: a 401 (the body never looked at) still leaves the connection usable, as Go's
    net/http does for up to 256 KiB; a longer body closes it, with Connection: close."""
    async with (
        open_foreman(nursery, StandIn(), token="s3cret") as fm,
        serving(fm.app, lifespan=True) as served,
    ):
        stream, buffer = await served.connect(), bytearray()
        head = b"POST /api/chat HTTP/1.1\r\nhost: localhost\r\ncontent-length: %d\r\n\r\n" % size

        async def send_request() -> None:
            with contextlib.suppress(trio.BrokenResourceError):  # refused: the server closed
                await stream.send_all(head + b"x" * size)

        async with trio.open_nursery() as sending:
            sending.start_soon(send_request)
            response = await read_response(stream, buffer)
        assert response.startswith(b"HTTP/1.1 401 Unauthorized")
        assert (b"connection: close" in response.lower()) is not kept
        if kept:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            assert (await read_response(stream, buffer)).startswith(b"HTTP/1.1 200 OK")
        else:
            assert await closed(stream)
        await stream.aclose()


async def test_expect_100_continue_is_answered_with_its_reason_phrase() -> None:
    """hypercorn sends it once the head is read (Go's net/http: when the body is first read;
    RFC 9110 allows both)."""
    async with serving(hello) as served:
        stream, buffer = await served.connect(), bytearray()
        await stream.send_all(
            b"POST /e HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
        )
        with trio.fail_after(2):
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive_some(65536)
        assert buffer.startswith(b"HTTP/1.1 100 Continue\r\n")
        del buffer[: buffer.index(b"\r\n\r\n") + 4]
        await stream.send_all(b"body")
        assert (await read_response(stream, buffer)).endswith(b"POST /e body")
        await stream.aclose()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400 Bad Request"),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"y" * 200_000 + b"\r\n\r\n", b"431 Request Header"),
    ],
)
async def test_a_malformed_request_gets_an_error_and_the_connection_closes(
    request_bytes: bytes, status: bytes
) -> None:
    async with serving(hello) as served:
        stream, buffer = await served.connect(), bytearray()
        await stream.send_all(request_bytes)
        response = await read_response(stream, buffer)
        assert response.startswith(b"HTTP/1.1 " + status)
        assert await closed(stream)
        await stream.aclose()


async def test_head_gets_the_headers_without_the_body() -> None:
    async with serving(hello) as served:
        stream = await served.connect()
        await stream.send_all(
            b"HEAD /h HTTP/1.1\r\nhost: a\r\n\r\nGET /g HTTP/1.1\r\nhost: a\r\n\r\n"
        )
        received = b""
        with trio.move_on_after(0.5):
            while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"GET /g "):
                received += await stream.receive_some(65536)
        head_answer, _, get_answer = received.partition(b"\r\n\r\n")
        assert b"content-length: 8" in head_answer.lower()  # what GET would have sent
        assert get_answer.startswith(b"HTTP/1.1 200 OK") and get_answer.endswith(b"GET /g ")
        await stream.aclose()


async def test_http_1_0_and_connection_close_end_the_connection_after_the_answer() -> None:
    async with serving(hello) as served:
        for request in (
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        ):
            stream, buffer = await served.connect(), bytearray()
            await stream.send_all(request)
            assert (await read_response(stream, buffer)).endswith(b"GET / ")
            assert await closed(stream)
            await stream.aclose()


async def test_an_app_error_before_any_message_is_a_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raise RuntimeError("boom")

    async with serving(app) as served:
        stream, buffer = await served.connect(), bytearray()
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        response = await read_response(stream, buffer)
        assert response.startswith(b"HTTP/1.1 500 Internal Server Error")
        assert await closed(stream)
        await stream.aclose()


@pytest.mark.parametrize(
    ("how", "path", "seen"),
    [("raises", b"/part", b"part"), ("returns", b"/part", b"part"), ("returns", b"/none", b"")],
)
async def test_an_answer_cut_short_ends_the_connection_without_its_last_chunk(
    how: str, path: bytes, seen: bytes
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/part":
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
        if how == "raises":
            raise RuntimeError("boom")

    async with serving(app) as served:
        stream = await served.connect()
        await stream.send_all(b"GET %s HTTP/1.1\r\nhost: a\r\n\r\n" % path)
        received = b""
        with trio.fail_after(2):
            while data := await stream.receive_some(65536):
                received += data
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert seen in received if seen else received.endswith(b"\r\n\r\n")  # the head
        assert b"0\r\n\r\n" not in received  # no last chunk: the client sees a cut
        await stream.aclose()


async def watched(scope: Any, receive: Any, send: Any) -> None:
    """As foreman's data plane: reads the body, then answers slowly while a task waits in
    receive() for the client to go away (and gives up on the answer if it does)."""
    if scope["type"] != "http":
        return
    await receive()
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            if (await receive())["type"] == "http.disconnect" and not answered:
                nursery.cancel_scope.cancel()

        answered = False
        nursery.start_soon(watch)
        await trio.sleep(0.05)
        answered = True
        await answer(send, scope["raw_path"])


async def test_a_half_close_after_pipelined_requests_cancels_only_the_last() -> None:
    """As Go's net/http (Ollama): bytes of a next request mean the client stays; the end
    of its input after its last request means it is gone (a long answer is cancelled)."""
    async with serving(watched) as served:
        stream, buffer = await served.connect(), bytearray()
        await stream.send_all(
            b"GET /one HTTP/1.1\r\nhost: a\r\n\r\nGET /two HTTP/1.1\r\nhost: a\r\n\r\n"
        )
        await stream.send_eof()  # as `printf ... | nc -N` does
        with trio.fail_after(2):
            assert (await read_response(stream, buffer)).endswith(b"/one")
            with pytest.raises(EOFError):
                await read_response(stream, buffer)
        await stream.aclose()


async def test_a_half_close_alone_is_a_client_gone() -> None:
    async with serving(watched) as served:
        stream, buffer = await served.connect(), bytearray()
        await stream.send_all(b"GET /one HTTP/1.1\r\nhost: a\r\n\r\n")
        await stream.send_eof()  # as Go's net/http (Ollama) takes it: the request is cancelled
        with pytest.raises(EOFError):
            await read_response(stream, buffer)
        await stream.aclose()


async def test_an_idle_connection_is_closed_after_keep_alive() -> None:
    async with serving(hello, keep_alive=0.2) as served:
        stream, buffer = await served.connect(), bytearray()
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        await read_response(stream, buffer)
        with trio.fail_after(2):
            assert await stream.receive_some(65536) == b""
        await stream.aclose()


async def test_shutdown_closes_idle_connections_and_lets_answers_finish() -> None:
    release, started = trio.Event(), trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            started.set()
            await release.wait()
        await answer(send)

    async with serving(app) as served:
        idle, busy, buffer = await served.connect(), await served.connect(), bytearray()
        await idle.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        await read_response(idle, buffer)
        await busy.send_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        await started.wait()
        served.stop.set()
        assert await closed(idle)
        with pytest.raises(OSError):
            await served.connect()  # no longer listening
        release.set()
        response = await read_response(busy, buffer)
        assert response.startswith(b"HTTP/1.1 200 OK")
        assert await closed(busy)  # foreman's app says Connection: close (test_lifecycle)
        await idle.aclose()
        await busy.aclose()


async def test_lifespan_runs_around_serving() -> None:
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await answer(send)

    async with serving(app, lifespan=True) as served:
        assert events == ["lifespan.startup"]
        stream, buffer = await served.connect(), bytearray()
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        await read_response(stream, buffer)
        await stream.aclose()
    assert events == ["lifespan.startup", "lifespan.shutdown"]


async def test_a_failed_lifespan_startup_stops_the_server() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(BaseException) as caught:  # noqa: PT011 (an exception group)
        with trio.fail_after(5):
            async with serving(app, lifespan=True):
                await trio.sleep_forever()
    leaves = [caught.value]
    while isinstance(leaves[-1], BaseExceptionGroup):
        leaves.append(leaves[-1].exceptions[0])
    assert "no database" in str(leaves[-1])


async def test_https_with_alpn_http_1_1(tmp_path: Path) -> None:
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["scheme"])
            await answer(send)

    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    client_context.set_alpn_protocols(["h2", "http/1.1"])
    tls = {"tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")}
    async with serving(app, **tls) as served:
        raw = await served.connect()
        stream = trio.SSLStream(raw, client_context, server_hostname="127.0.0.1")
        await stream.do_handshake()
        assert stream.selected_alpn_protocol() == "http/1.1"  # never h2
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        received = b""
        while not received.endswith(b"ok"):
            received += await stream.receive_some(65536)
        assert received.startswith(b"HTTP/1.1 200 OK") and seen == ["https"]
        await stream.aclose()
