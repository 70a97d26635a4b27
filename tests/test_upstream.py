"""The way to the target: httpx2's own transport as foreman builds it
(:func:`foreman.backends.ollama.target.target_transport`) and foreman's relay on it.

What is pinned is what foreman promises on top of httpx2: a request the target may have
run is never sent twice, a caller that is cancelled closes its connection (Ollama then
aborts the generation), and lines that came in one read go to the client in one write.
The servers here are plain h11 on loopback sockets, so what they see is what was sent.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import httpcore2
import httpx2
import pytest
import trio
import trio.testing

from foreman.backends.ollama.target import Target, target_transport
from foreman.dataplane.errors import TargetError
from foreman.dataplane.exchange import Exchange
from foreman.dataplane.relay import relay
from foreman.standins.ollama import StandIn, serve

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


def one_connection() -> httpx2.AsyncHTTPTransport:
    return target_transport(limits=httpx2.Limits(max_connections=1))


async def fetch(target: Target, path: str = "/", method: str = "GET", body: bytes = b"") -> bytes:
    request = target.request(method, path.encode(), content=body or None)
    return (await target.fetch(request, total_timeout=5.0))[2]


# --- never twice ----------------------------------------------------------------------------


@bounded(5)
async def test_a_connection_the_target_closed_while_idle_is_not_taken(start: Start) -> None:
    async def respond(call: Call) -> None:
        await call.answer(b"once")
        await call.stream.aclose()  # without Connection: close, as a server's idle timeout

    server, url = await start(respond)
    async with target_transport() as transport:
        target = Target(transport, settings(ollama_url=url))
        await fetch(target)
        while server.open:
            await trio.testing.wait_all_tasks_blocked()
        assert await fetch(target, "/api/chat", "POST", b"x") == b"once"
    assert [(call.connection, call.body) for call in server.calls] == [(1, b""), (2, b"x")]


@bounded(5)
async def test_a_post_the_target_may_have_run_is_never_sent_again(start: Start) -> None:
    """The target read the POST whole and closed without an answer (it may have run the
    chat, the delete): foreman reports the failure, and sends nothing more."""

    async def respond(call: Call) -> None:
        if call.request.method == b"GET":
            await call.answer(b"ok")
        # a POST: the connection closes with no answer

    server, url = await start(respond)
    async with target_transport() as transport:
        target = Target(transport, settings(ollama_url=url))
        await fetch(target)  # the connection is reused for the POST
        with pytest.raises(TargetError):
            await fetch(target, "/api/delete", "POST", b'{"model":"x"}')
        await trio.sleep(0.1)
    assert [(call.connection, call.request.method) for call in server.calls] == [
        (1, b"GET"),
        (1, b"POST"),
    ]
    assert server.accepted == 1


# --- a cancelled caller closes its connection -----------------------------------------------


@bounded(5)
async def test_cancelling_the_reader_mid_body_closes_the_connection(start: Start) -> None:
    hung_up = trio.Event()
    server, url = await start(hold_open(hung_up))
    async with one_connection() as transport:
        target = Target(transport, settings(ollama_url=url))
        with trio.CancelScope() as scope:
            response = await target.send(target.request("GET", b"/hold"), header_timeout=5.0)
            try:
                chunks = target.chunks(response)
                assert await anext(chunks) == b"line 1\n"
                scope.cancel()
                await anext(chunks)
            finally:
                with trio.CancelScope(shield=True):
                    await response.aclose()
        assert scope.cancelled_caught
        await hung_up.wait()  # the server saw the connection end
        assert await fetch(target) == b"next"  # the one connection is free again
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
    async with one_connection() as transport:
        target = Target(transport, settings(ollama_url=url))
        async with trio.open_nursery() as nursery:
            request = target.request("POST", b"/never", content=b"{}")
            nursery.start_soon(functools.partial(target.send, request, header_timeout=None))
            await server.wait_calls(1)
            nursery.cancel_scope.cancel()
        await hung_up.wait()
        assert await fetch(target) == b"next"
    assert server.accepted == 2


# --- one read, one write --------------------------------------------------------------------


@bounded(5)
async def test_lines_that_came_in_one_read_go_to_the_client_in_two_writes(start: Start) -> None:
    """Ollama sends each line as an HTTP chunk of its own; of five that arrived together (a
    client slower than the target), the first goes out at once and the other four pile up
    while it is written, then go in one write; the sixth, later, in one of its own."""
    lines = [b'{"n":%d}\n' % n for n in range(5)]
    bodies: list[bytes] = []
    more, written = trio.Event(), trio.Event()

    async def respond(call: Call) -> None:
        ndjson = [(b"Content-Type", b"application/x-ndjson"), (b"Transfer-Encoding", b"chunked")]
        await call.send(h11.Response(status_code=200, headers=ndjson))
        await call.send(*(h11.Data(data=line) for line in lines))
        await more.wait()
        await call.send(h11.Data(data=b'{"done":true}\n'), h11.EndOfMessage())

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            written.set()
            await trio.sleep(0.05)  # a write that takes a while: lines pile up meanwhile

    _, url = await start(respond)
    async with target_transport() as transport:
        target = Target(transport, settings(ollama_url=url))
        exchange = Exchange("POST", "/api/chat", 0.0, count_tokens=True)
        request = target.request("POST", b"/api/chat", content=b"{}")
        async with trio.open_nursery() as nursery:
            relaying = functools.partial(relay, header_timeout=5.0)
            nursery.start_soon(relaying, target, request, send, exchange)
            while b"".join(bodies) != b"".join(lines):
                await written.wait()
                written = trio.Event()
            more.set()
    assert bodies[:2] == [lines[0], b"".join(lines[1:])]
    assert bodies[2:] == [b'{"done":true}\n', b""]
    assert exchange.final_line == b'{"done":true}\n'


# --- as foreman's transport -----------------------------------------------------------------


@bounded(5)
async def test_it_carries_foremans_target_to_the_stand_in(nursery: trio.Nursery) -> None:
    standin = StandIn(token_rate=1000.0)
    urls: list[str] = await nursery.start(functools.partial(serve, standin, "127.0.0.1:0"))
    async with target_transport() as transport:
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


@bounded(5)
async def test_a_network_backend_given_makes_the_connections(start: Start) -> None:
    """The seam for an outbound-address policy: every connection goes through it."""
    asked: list[tuple[str, int]] = []

    class Counting(httpcore2.AsyncNetworkBackend):
        def __init__(self) -> None:
            self.inner = httpcore2.TrioBackend()

        async def connect_tcp(self, host: str, port: int, **options: Any) -> Any:
            asked.append((host, port))
            return await self.inner.connect_tcp(host, port, **options)

        async def sleep(self, seconds: float) -> None:
            await self.inner.sleep(seconds)

    _, url = await start(hello)
    async with target_transport(network_backend=Counting()) as transport:
        target = Target(transport, settings(ollama_url=url))
        assert await fetch(target) == b"hello"
    assert asked == [("127.0.0.1", int(url.rsplit(":", 1)[1]))]
