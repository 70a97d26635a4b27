"""An httpx2 transport that calls an ASGI app in-process and streams its body.

``httpx2.ASGITransport`` buffers the whole response body and so cannot show
streaming; this one hands each ``http.response.body`` message to the client as
it is sent, which keeps chunk-by-chunk tests honest and lets them run on trio's
``MockClock`` (no sockets, so autojump is safe).

It behaves like a socket where that matters to foreman:

* ``reachable()`` returning False raises :class:`httpx2.ConnectError`, as a
  refused connection does;
* an app that raises after its response started ends the body with
  :class:`httpx2.RemoteProtocolError` (``incomplete chunked read``), as a
  server that dies mid-stream does; before it started, with
  ``Server disconnected without sending a response.``;
* closing the response early delivers ``http.disconnect`` to the app, as a
  client that hangs up does.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import trio

__all__ = ["ASGIStreamTransport"]

_END = object()


class _Died(Exception):
    """Marker put on the channel when the app raised."""


class ASGIStreamTransport(httpx2.AsyncBaseTransport):
    """Serve httpx requests from ``app`` inside ``nursery``.

    Args:
        app: an ASGI 3 application.
        nursery: where each request's app task runs; it must outlive the
            responses (a test's ``nursery`` fixture does).
        reachable: called on every request; False means "connection refused".
        client: the ``(host, port)`` the app sees as its peer.
    """

    def __init__(
        self,
        app: Any,
        nursery: trio.Nursery,
        *,
        reachable: Callable[[], bool] = lambda: True,
        client: tuple[str, int] = ("127.0.0.1", 50000),
    ) -> None:
        self._app = app
        self._nursery = nursery
        self._reachable = reachable
        self._client = client

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not self._reachable():
            raise httpx2.ConnectError("[Errno 111] Connection refused", request=request)
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": self._client,
            "server": (request.url.host, request.url.port or 80),
            "extensions": {},
        }
        send_messages, messages = trio.open_memory_channel[Any](math.inf)
        disconnected = trio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if not disconnected.is_set():
                send_messages.send_nowait(message)

        async def run_app() -> None:
            with send_messages:
                try:
                    await self._app(scope, receive, send)
                except Exception as exc:  # the server died: the client sees a broken stream
                    if not disconnected.is_set():
                        send_messages.send_nowait(_Died(repr(exc)))
                else:
                    if not disconnected.is_set():
                        send_messages.send_nowait(_END)

        self._nursery.start_soon(run_app)
        try:
            start = await messages.receive()
        except BaseException:  # the client gave up before the answer began: it hangs up
            disconnected.set()
            messages.close()
            raise
        if isinstance(start, _Died) or start is _END:
            disconnected.set()
            raise httpx2.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        assert start["type"] == "http.response.start", start
        return httpx2.Response(
            start["status"],
            headers=start.get("headers", []),
            stream=_BodyStream(messages, disconnected, request),
            request=request,
        )


class _BodyStream(httpx2.AsyncByteStream):
    def __init__(
        self,
        messages: trio.MemoryReceiveChannel[Any],
        disconnected: trio.Event,
        request: httpx2.Request,
    ) -> None:
        self._messages = messages
        self._disconnected = disconnected
        self._request = request
        self._finished = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        # A plain iterator, not an async generator: abandoning it early must not warn.
        return self

    async def __anext__(self) -> bytes:
        while not self._finished:
            try:
                message = await self._messages.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                break
            if message is _END:
                break
            if isinstance(message, _Died):
                self._finished = True
                raise httpx2.RemoteProtocolError(
                    "peer closed connection without sending complete message body "
                    "(incomplete chunked read)",
                    request=self._request,
                )
            if message["type"] != "http.response.body":
                continue
            if not message.get("more_body", False):
                self._finished = True
            if message.get("body"):
                return message["body"]
        self._finished = True
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._disconnected.set()
        self._messages.close()
