#!/usr/bin/env python3
"""Benchmark: what foreman costs, measured against the stand-in, all real processes on loopback.

Measures, each directly against the stand-in and through foreman:
  * time to first line and total time of one streamed chat (relay overhead per request);
  * N concurrent chats: the gate serialises them (max in flight at the target stays 1);
  * N concurrent embeds: they bypass the gate (and overlap at the target).

Usage: python scripts/bench.py [--chats 10] [--embeds 50] [--tokens 200] [--rate 2000]
Prints a table; exits 0. Numbers are for comparison on one machine, not absolute goals.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request

import httpx
import trio
from _procs import foreman_process, free_port, wait_http


async def one_chat(client: httpx.AsyncClient) -> tuple[float, float]:
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "bench"}],
    }
    start = time.perf_counter()
    first = None
    async with client.stream("POST", "/api/chat", json=body) as response:
        async for _ in response.aiter_lines():
            first = first or time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


async def concurrently(n: int, fn, *args) -> float:  # noqa: ANN001
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(fn, *args)
    return time.perf_counter() - start


async def embed(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "bench"})
    response.raise_for_status()


def stats(target: str) -> dict:
    with urllib.request.urlopen(f"{target}/_standin/stats") as response:
        return json.load(response)


def reset(target: str) -> None:
    urllib.request.urlopen(
        urllib.request.Request(f"{target}/_standin/reset", method="POST")
    ).close()


async def measure(base: str, target: str, args: argparse.Namespace) -> dict[str, float]:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        await one_chat(client)  # warm: model loaded, connections open
        singles = [await one_chat(client) for _ in range(5)]
        reset(target)
        chats_time = await concurrently(args.chats, one_chat, client)
        chat_stats = stats(target)
        reset(target)
        embeds_time = await concurrently(args.embeds, embed, client)
        embed_stats = stats(target)
    return {
        "first line (ms, median of 5)": 1000 * statistics.median(f for f, _ in singles),
        "one chat (ms, median of 5)": 1000 * statistics.median(t for _, t in singles),
        f"{args.chats} concurrent chats (s)": chats_time,
        "max chats in flight at target": chat_stats["max_chats_in_flight"],
        f"{args.embeds} concurrent embeds (s)": embeds_time,
        "max embeds in flight at target": embed_stats["max_embeds_in_flight"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=10)
    parser.add_argument("--embeds", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=200, help="lines per chat stream")
    parser.add_argument("--rate", type=float, default=2000, help="stand-in tokens per second")
    args = parser.parse_args()
    target_port, foreman_port = free_port(), free_port()
    target, url = f"http://127.0.0.1:{target_port}", f"http://127.0.0.1:{foreman_port}"
    env = {
        "FOREMAN_OLLAMA_URL": target,
        "FOREMAN_LISTEN": f"127.0.0.1:{foreman_port}",
        "FOREMAN_LOG_LEVEL": "warning",
    }
    with foreman_process(
        [
            "standin",
            "--listen",
            f"127.0.0.1:{target_port}",
            "--token-rate",
            str(args.rate),
            "--reply-tokens",
            str(args.tokens),
            "--log-level",
            "warning",
        ]
    ):
        wait_http(f"{target}/api/version")
        with foreman_process(["serve"], env):
            wait_http(f"{url}/healthz")
            direct = trio.run(measure, target, target, args)
            via = trio.run(measure, url, target, args)
    print(f"{'measure':40} {'direct':>10} {'foreman':>10}")
    for key in direct:
        print(f"{key:40} {direct[key]:>10.2f} {via[key]:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
