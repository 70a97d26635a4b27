#!/usr/bin/env python3
"""A minimal fast fake Ollama for scripts/bench.py: trio + h11, one process, no framework.

The stand-in (``foreman standin``) is faithful but slow by design: a Quart app whose
embedder runs one input at a time, 10 ms each. Behind it, every front would measure the
stand-in. This target answers only what foreman needs and the benchmark measures, as
cheaply as a trio server can:

* ``GET /api/tags``, ``GET /api/ps`` (both models resident), ``GET /api/version``,
  ``POST /api/show``: fixed JSON bodies;
* ``POST /api/chat``: ``"stream": false`` gets one JSON object; otherwise an NDJSON stream
  of ``options.num_predict`` content lines (default 19) and the final ``done`` line, so
  20 lines by default, each line its own chunk; ``options.bench_line_delay`` (seconds)
  paces the lines;
* ``POST /v1/chat/completions``: a 20-event Server-Sent Events stream (19 chunks and
  ``data: [DONE]``), each event its own chunk (Ollama's OpenAI face);
* ``POST /api/embed``: one vector of ``--dims`` floats per request, after
  ``--embed-delay`` seconds. Embeds run in parallel (no model slot).

Usage: python scripts/bench_target.py --listen 127.0.0.1:11500 [--embed-delay 0.005]
Stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import signal
import time

import h11
import trio

JSON = [(b"content-type", b"application/json; charset=utf-8")]
NDJSON = [(b"content-type", b"application/x-ndjson")]
SSE = [(b"content-type", b"text/event-stream")]
MODEL = {
    "format": "gguf",
    "parent_model": "",
    "families": None,
    "quantization_level": "Q4_K_M",
}


def _models(ps: bool) -> bytes:
    models = []
    for name, family, size in (
        ("llama3.2:latest", "llama", 2_019_393_189),
        ("nomic-embed-text:latest", "nomic-bert", 274_302_450),
    ):
        entry: dict = {"name": name, "model": name, "size": size, "digest": "0" * 64}
        entry["details"] = {**MODEL, "family": family, "families": [family]}
        if ps:
            entry.update(expires_at="2318-01-01T00:00:00Z", size_vram=size)
        else:
            entry["modified_at"] = "2026-01-01T00:00:00Z"
        models.append(entry)
    return json.dumps({"models": models}, separators=(",", ":")).encode()


class Target:
    def __init__(self, embed_delay: float, dims: int) -> None:
        self.embed_delay = embed_delay
        vector = [round(math.sin(i) / math.sqrt(dims / 2), 8) for i in range(dims)]
        head = {"model": "nomic-embed-text", "embeddings": [vector]}
        self.embed = json.dumps(
            {**head, "total_duration": 5_000_000, "load_duration": 1000, "prompt_eval_count": 1},
            separators=(",", ":"),
        ).encode()
        self.fixed = {
            ("GET", b"/api/tags"): _models(ps=False),
            ("GET", b"/api/ps"): _models(ps=True),
            ("GET", b"/api/version"): b'{"version":"0.33.0"}',
            ("POST", b"/api/show"): b'{"modelfile":"FROM llama3.2","details":{"format":"gguf"}}',
        }

    async def serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await _read(stream, conn)
                if request is None:
                    return
                await self.answer(stream, conn, request, body)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    async def answer(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        method, path = request.method.decode(), request.target.split(b"?")[0]
        fixed = self.fixed.get((method, path))
        if fixed is not None:
            await _whole(stream, conn, 200, fixed)
        elif (method, path) == ("POST", b"/api/embed"):
            if self.embed_delay:
                await trio.sleep(self.embed_delay)
            await _whole(stream, conn, 200, self.embed)
        elif (method, path) == ("POST", b"/api/chat"):
            await self.chat(stream, conn, json.loads(body or b"{}"))
        elif (method, path) == ("POST", b"/v1/chat/completions"):
            await self.sse_chat(stream, conn, json.loads(body or b"{}"))
        else:
            await _whole(
                stream, conn, 404, b"404 page not found", [(b"content-type", b"text/plain")]
            )

    async def chat(self, stream: trio.SocketStream, conn: h11.Connection, body: dict) -> None:
        options = body.get("options") or {}
        count, delay = options.get("num_predict", 19), options.get("bench_line_delay", 0)
        model = body.get("model", "llama3.2")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        head = f'{{"model":"{model}","created_at":"{stamp}","message":{{"role":"assistant",'
        final = (
            head + '"content":""},"done_reason":"stop","done":true,"total_duration":1000000,'
            f'"load_duration":1000,"prompt_eval_count":10,"prompt_eval_duration":1000,'
            f'"eval_count":{count},"eval_duration":1000000}}\n'
        ).encode()
        if body.get("stream") is False:
            whole = final.replace(b'"content":""', b'"content":"' + b"word " * count + b'"')
            await _whole(stream, conn, 200, whole.rstrip(b"\n"))
            return
        await stream.send_all(
            conn.send(h11.Response(status_code=200, headers=NDJSON, reason=b"OK"))
        )
        line = (head + '"content":"word "},"done":false}\n').encode()
        for _ in range(count):
            if delay:
                await trio.sleep(delay)
            await stream.send_all(conn.send(h11.Data(data=line)))
        await stream.send_all(conn.send(h11.Data(data=final)) + conn.send(h11.EndOfMessage()))

    async def sse_chat(self, stream: trio.SocketStream, conn: h11.Connection, body: dict) -> None:
        """Ollama's OpenAI face, streamed: 19 ``chat.completion.chunk`` events and
        ``data: [DONE]``, each event its own chunk."""
        model = body.get("model", "llama3.2")
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=SSE, reason=b"OK")))
        chunk = (
            f'data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
            f'"model":"{model}","system_fingerprint":"fp_ollama","choices":[{{"index":0,'
            f'"delta":{{"content":"word "}},"finish_reason":null}}]}}\n\n'
        ).encode()
        for _ in range(19):
            await stream.send_all(conn.send(h11.Data(data=chunk)))
        done = conn.send(h11.Data(data=b"data: [DONE]\n\n")) + conn.send(h11.EndOfMessage())
        await stream.send_all(done)


async def _read(
    stream: trio.SocketStream, conn: h11.Connection
) -> tuple[h11.Request | None, bytes]:
    request, body = None, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, body
        else:  # ConnectionClosed
            return None, b""


async def _whole(
    stream: trio.SocketStream,
    conn: h11.Connection,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] = JSON,
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    reason = b"OK" if status == 200 else b"Not Found"
    data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
    await stream.send_all(data + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))


async def main(listen: str, target: Target) -> None:
    host, _, port = listen.rpartition(":")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(trio.serve_tcp, target.serve, int(port), host=host, backlog=4096)
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:11500", help="HOST:PORT")
    parser.add_argument("--embed-delay", type=float, default=0.0, help="seconds per embed")
    parser.add_argument("--dims", type=int, default=768, help="floats per embedding vector")
    args = parser.parse_args()
    trio.run(main, args.listen, Target(args.embed_delay, args.dims))
