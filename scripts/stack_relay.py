#!/usr/bin/env python3
"""The stack floor: a minimal relay on foreman's own stack, for scripts/bench.py.

hypercorn serves a raw ASGI app that reads each request's body whole, sends it with one
``httpx2.AsyncClient`` (its pool kept alive) and relays the status, the headers and the
body as httpx2 yields it. No routing, no checks, no logs: what a relay costs on the
libraries foreman is built on, the bound foreman's own code is measured against.

Usage: python scripts/stack_relay.py --listen 127.0.0.1:8082 --target http://127.0.0.1:11434
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import httpx2
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"te", b"upgrade"}


def relay_app(client: httpx2.AsyncClient) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")  # hypercorn then goes on without it
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        target = scope["raw_path"] + (
            b"?" + scope["query_string"] if scope["query_string"] else b""
        )
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP]
        request = client.build_request(
            scope["method"], target.decode(), headers=headers, content=body
        )
        response = await client.send(request, stream=True)
        try:
            start_headers = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP]
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": start_headers,
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    return app


async def main(listen: str, target: str) -> None:
    limits = httpx2.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=30)
    config = Config()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("stack_relay")
    config.keep_alive_max_requests = sys.maxsize
    async with httpx2.AsyncClient(base_url=target, limits=limits, trust_env=False) as client:
        await serve(relay_app(client), config)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\nUsage:")[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--target", required=True, metavar="URL")
    options = parser.parse_args()
    try:
        trio.run(main, options.listen, options.target)
    except KeyboardInterrupt:
        pass
