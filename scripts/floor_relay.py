#!/usr/bin/env python3
"""The floor: a minimal correct HTTP/1.1 reverse proxy on trio + h11, for scripts/bench.py.

It reads each request with h11 (body whole), sends it on a kept-alive h11 connection to
the target (one per request in flight, reused afterwards), and relays the status, the
headers and the body chunks as they arrive. No routing, no checks, no logs: what a trio
relay costs at the least, the lower bound foreman is measured against.

Usage: python scripts/floor_relay.py --listen 127.0.0.1:8081 --target http://127.0.0.1:11434
"""

from __future__ import annotations

import argparse
import functools
import signal
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length", b"te"}
KEEP_LENGTH = HOP - {b"content-length"}


async def next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await stream.receive_some(65536))
    return event


class Relay:
    def __init__(self, target: str) -> None:
        url = urlsplit(target)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.host_header = url.netloc.encode()
        self.idle: list[tuple[trio.SocketStream, h11.Connection]] = []

    async def exchange(self, request: h11.Request, body: bytes) -> tuple[Any, ...]:
        """Send the request upstream; returns the connection and the response head."""
        headers = [(k, v) for k, v in request.headers if k not in HOP]
        headers += [(b"host", self.host_header), (b"content-length", b"%d" % len(body))]
        head = h11.Request(method=request.method, target=request.target, headers=headers)
        pairs = [self.idle.pop()] if self.idle else []  # a kept-alive one, then a new one
        while True:
            reused = bool(pairs)
            stream, up = (
                pairs.pop() if pairs else (await self.connect(), h11.Connection(h11.CLIENT))
            )
            try:
                data = up.send(head) + (up.send(h11.Data(data=body)) if body else b"")
                await stream.send_all(data + up.send(h11.EndOfMessage()))
                response = await next_event(stream, up)
                if isinstance(response, h11.Response):
                    return stream, up, response
                raise trio.BrokenResourceError("the target closed the connection")
            except (trio.BrokenResourceError, h11.ProtocolError):
                await stream.aclose()
                if not reused:  # else the target had closed it while idle: try a new one
                    raise

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(self.host, self.port)

    async def serve(self, client_stream: trio.SocketStream) -> None:
        client = h11.Connection(h11.SERVER)
        try:
            while isinstance(request := await next_event(client_stream, client), h11.Request):
                body = b""
                while isinstance(event := await next_event(client_stream, client), h11.Data):
                    body += event.data
                if not isinstance(event, h11.EndOfMessage):
                    return
                try:
                    stream, up, response = await self.exchange(request, body)
                except (OSError, trio.BrokenResourceError, h11.ProtocolError):
                    head = h11.Response(status_code=502, headers=[(b"content-length", b"0")])
                    await client_stream.send_all(
                        client.send(head) + client.send(h11.EndOfMessage())
                    )
                else:
                    headers = [(k, v) for k, v in response.headers if k not in KEEP_LENGTH]
                    head = h11.Response(
                        status_code=response.status_code, headers=headers, reason=response.reason
                    )
                    await client_stream.send_all(client.send(head))
                    try:
                        while isinstance(event := await next_event(stream, up), h11.Data):
                            await client_stream.send_all(client.send(h11.Data(data=event.data)))
                        await client_stream.send_all(client.send(h11.EndOfMessage()))
                    finally:
                        if up.our_state is h11.DONE and up.their_state is h11.DONE:
                            up.start_next_cycle()
                            self.idle.append((stream, up))
                        else:
                            await stream.aclose()
                if client.our_state is not h11.DONE:
                    return
                client.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await client_stream.aclose()


async def main(listen: str, target: str) -> None:
    host, _, port = listen.rpartition(":")
    serve = functools.partial(trio.serve_tcp, Relay(target).serve, int(port), host=host)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(serve, backlog=4096))
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT to serve on")
    parser.add_argument("--target", default="http://127.0.0.1:11434", help="the target's URL")
    args = parser.parse_args()
    trio.run(main, args.listen, args.target)
