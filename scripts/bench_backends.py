#!/usr/bin/env python3
"""What translating costs: a Claude stream read directly vs. through foreman as Ollama NDJSON.

Starts the Anthropic stand-in (in this process, on a free port) with a reply of
``--words`` words and foreman (``foreman serve``, its own process) with that
stand-in added as a Claude backend; then, one request at a time, ``--rounds``
times each:

* direct: ``POST /v1/messages`` with ``"stream": true``, the SSE read to its end;
* foreman: ``POST /api/chat`` routed to the backend, the NDJSON read to its end.

Prints p50 of time to the first delta and of the whole stream for both, and the
difference per streamed line. Usage: ``python scripts/bench_backends.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial

import httpx2
import trio
from _procs import foreman_process, free_port, wait_http

from foreman.standins.anthropic import AnthropicStandIn
from foreman.standins.anthropic import serve as serve_claude

KEY = "sk-ant-bench-key"


async def timed_stream(client: httpx2.AsyncClient, url: str, body: dict, headers: dict) -> tuple:
    start = time.perf_counter()
    first = None
    lines = 0
    async with client.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200, response.status_code
        async for line in response.aiter_lines():
            if line.strip():
                lines += 1
                first = first or time.perf_counter() - start
    return first, time.perf_counter() - start, lines


async def main(words: int, rounds: int) -> None:
    claude = AnthropicStandIn(api_key=KEY, reply=" ".join(["word"] * words))
    port = free_port()
    async with trio.open_nursery() as nursery:
        (claude_url,) = await nursery.start(partial(serve_claude, claude, "127.0.0.1:0"))
        env = {
            "FOREMAN_OLLAMA_URL": "http://127.0.0.1:9",  # no Ollama: Claude only
            "FOREMAN_LISTEN": f"127.0.0.1:{port}",
            "FOREMAN_DATA_DIR": tempfile.mkdtemp(prefix="foreman-bench-"),
            "FOREMAN_LOG_LEVEL": "warning",
        }
        url = f"http://127.0.0.1:{port}"
        with foreman_process(["serve"], env):
            await trio.to_thread.run_sync(wait_http, f"{url}/healthz")
            async with httpx2.AsyncClient(timeout=60) as client:
                backend = {"name": "claude", "type": "anthropic", "endpoint": claude_url}
                await client.post(f"{url}/admin/api/backends", json={**backend, "api_key": KEY})
                message = [{"role": "user", "content": "go"}]
                direct_body = {"model": claude.models[0], "max_tokens": 4096, "stream": True}
                direct_body["messages"] = message
                direct_headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
                routed = {"model": f"claude/{claude.models[0]}", "messages": message}
                results: dict[str, list[tuple]] = {"direct": [], "foreman": []}
                for _ in range(rounds + 3):  # three rounds warm up
                    results["direct"].append(
                        await timed_stream(
                            client, f"{claude_url}/v1/messages", direct_body, direct_headers
                        )
                    )
                    results["foreman"].append(
                        await timed_stream(client, f"{url}/api/chat", routed, {})
                    )
        nursery.cancel_scope.cancel()
    print(f"{words}-word reply, {rounds} rounds, p50 (ms):")
    print(f"{'':8} {'first delta':>12} {'whole':>10} {'lines':>6}")
    p50 = {}
    for name, rows in results.items():
        rows = rows[3:]
        first = statistics.median(r[0] for r in rows) * 1000
        whole = statistics.median(r[1] for r in rows) * 1000
        p50[name] = (first, whole)
        print(f"{name:8} {first:12.2f} {whole:10.2f} {rows[0][2]:6d}")
    added_first = p50["foreman"][0] - p50["direct"][0]
    added = p50["foreman"][1] - p50["direct"][1]
    print(f"added by foreman: first line {added_first:.2f} ms; whole stream {added:.2f} ms,")
    print(f"  {added / words * 1000:.0f} µs per streamed line beyond the first")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=200, help="words (deltas) in the reply")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    trio.run(main, args.words, args.rounds)
