"""A raw ASGI client: requests exactly as a socket would carry them.

httpx normalises URLs before it sends them (``/api/./chat`` becomes
``/api/chat``), so tests of path spellings talk to foreman's ASGI app directly,
with the scope hypercorn builds: ``raw_path`` as sent, ``path`` percent-decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import trio


@dataclass
class Answer:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False


async def call(
    app: Any,
    method: str,
    raw_path: bytes,
    *,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    http_version: str = "1.1",
) -> Answer:
    """Send one request to ``app`` and wait for its whole answer."""
    path, _, query = raw_path.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.1"},
        "http_version": http_version,
        "method": method,
        "scheme": "http",
        "path": unquote(path.decode("ascii")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"localhost:8080"), *(headers or [])],
        "client": ("127.0.0.1", 50001),
        "server": ("127.0.0.1", 8080),
        "extensions": {},
    }
    answer = Answer()
    finished = trio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.lower(): v for k, v in message.get("headers", [])}
        else:
            answer.body += message.get("body", b"")
            if not message.get("more_body", False):
                answer.complete = True
                finished.set()

    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    return answer
