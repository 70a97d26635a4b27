#!/usr/bin/env python3
"""Benchmark several replicas on one PostgreSQL (ADR 16) against one replica.

Starts a throwaway PostgreSQL cluster (tests/postgres.py: initdb as an unprivileged user),
the stand-in target and ``foreman serve`` processes on loopback, then measures:

* **chat hand-over**: ``--chats`` chats of one token each from ``--clients`` concurrent
  clients, so the slot passes from one chat to the next all the time; milliseconds per
  chat (wall time / chats) on SQLite with one replica, on PostgreSQL with one replica
  (hand-over within it), and on PostgreSQL with two replicas taking turns (hand-over
  between them). The difference is what the cross-replica gate adds per chat.
* **jobs submitted per second**: ``POST /jobs`` (one job each) from ``--clients``
  connections, the stand-in frozen so the jobs stay queued; SQLite vs PostgreSQL.

Prints a table; exit 0. Needs PostgreSQL's server binaries (apt-get install postgresql).

Usage: python scripts/bench_replicas.py [--chats 300] [--jobs 2000] [--clients 16]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx2
import trio
from _procs import foreman_process, free_port, wait_http

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.postgres import start_cluster  # noqa: E402

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
JOB = {"endpoint": "chat", "request": CHAT}


@contextlib.contextmanager
def replicas(target: str, count: int, database: str | None) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        urls = []
        for n in range(count):
            port = free_port()
            env = {
                "FOREMAN_OLLAMA_URL": target,
                "FOREMAN_LISTEN": f"127.0.0.1:{port}",
                "FOREMAN_DATA_DIR": tempfile.mkdtemp(prefix="foreman-bench-"),
                "FOREMAN_LOG_LEVEL": "warning",
                "FOREMAN_MAX_QUEUE": "4096",
                "FOREMAN_REPLICA_ID": f"r{n}",
            }
            if database:
                env |= {"FOREMAN_DATABASE_URL": database, "FOREMAN_SECRET_KEY": "bench"}
            stack.enter_context(foreman_process(["serve"], env))
            wait_http(f"http://127.0.0.1:{port}/readyz", 60)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls


async def hammer(urls: list[str], requests: int, clients: int, path: str, body: dict) -> float:
    """Send ``requests`` POSTs round-robin over ``urls`` from ``clients`` tasks; seconds."""
    left = iter(range(requests))

    async def client() -> None:
        async with httpx2.AsyncClient(timeout=120) as http:
            for n in left:
                response = await http.post(f"{urls[n % len(urls)]}{path}", json=body)
                assert response.status_code in (200, 202), response.text

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    cluster = start_cluster()
    target_port = free_port()
    target = f"http://127.0.0.1:{target_port}"
    rows = []
    try:
        with foreman_process(
            ["standin", "--listen", f"127.0.0.1:{target_port}", "--reply-tokens", "1",
             "--token-rate", "100000", "--log-level", "warning"]
        ):  # fmt: skip
            wait_http(f"{target}/api/version")
            for label, count, pg in (
                ("SQLite, one replica", 1, False),
                ("PostgreSQL, one replica (hand-over within it)", 1, True),
                ("PostgreSQL, two replicas taking turns", 2, True),
            ):
                with replicas(target, count, cluster.new_database() if pg else None) as urls:
                    trio.run(hammer, urls, 20, 4, "/api/chat", CHAT)  # warm-up
                    took = trio.run(hammer, urls, args.chats, args.clients, "/api/chat", CHAT)
                    rows.append((f"chat, {label}", f"{took / args.chats * 1000:.2f} ms/chat"))
            for label, pg in (("SQLite", False), ("PostgreSQL", True)):
                with replicas(target, 1, cluster.new_database() if pg else None) as urls:
                    httpx2.post(f"{target}/_standin/freeze")  # the jobs stay queued
                    took = trio.run(hammer, urls, args.jobs, args.clients, "/jobs", JOB)
                    rows.append((f"jobs submitted, {label}", f"{args.jobs / took:.0f} jobs/s"))
                    httpx2.post(f"{target}/_standin/thaw")
    finally:
        cluster.stop()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
