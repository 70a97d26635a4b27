#!/usr/bin/env python3
"""Benchmark the job queue: enqueue rate, GET /jobs/{id} latency and memory per stored job.

Runs the stand-in target and ``foreman serve`` as real processes on loopback, with a
fresh data dir. The stand-in is frozen first (its first chat hangs, holding the slot),
so every job submitted stays queued and nothing but the queue is measured:

* enqueue: ``POST /jobs`` from ``--clients`` concurrent connections, jobs per second,
  one job per request (``--single`` of them) and then arrays of ``--batch`` jobs;
* ``GET /jobs/{id}`` p50/p99 with ``--jobs`` jobs stored (random ids, one connection);
* foreman's RSS before and after storing them.

Goals (issue 7): enqueue >= 1,000 jobs/s; GET p50 < 5 ms with 10,000 stored;
RSS growth < 50 MB for 10,000 stored jobs. Prints a table and PASS/MISS; exit 0.

Usage: python scripts/bench_jobs.py [--jobs 10000] [--single 2000] [--batch 500] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import httpx2
import trio
from _procs import foreman_process, free_port, rss_mb, wait_http

JOB = {
    "endpoint": "chat",
    "request": {"model": "llama3.2", "messages": [{"role": "user", "content": "x" * 200}]},
    "metadata": {"doc": 1},
}


async def enqueue(url: str, jobs: int, clients: int, batch: int) -> tuple[list[str], float]:
    """POST ``jobs`` jobs from ``clients`` connections, ``batch`` per request (1: one object)."""
    ids: list[str] = []
    requests_per_client = jobs // clients // batch

    async def client_loop() -> None:
        async with httpx2.AsyncClient(base_url=url, timeout=30) as client:
            for _ in range(requests_per_client):
                response = await client.post("/jobs", json=JOB if batch == 1 else [JOB] * batch)
                assert response.status_code == 202, response.text
                answer = response.json()
                ids.extend([answer["id"]] if batch == 1 else [j["id"] for j in answer["jobs"]])

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client_loop)
    return ids, time.perf_counter() - start


async def get_latencies(url: str, ids: list[str], samples: int) -> list[float]:
    times = []
    async with httpx2.AsyncClient(base_url=url, timeout=30) as client:
        for job_id in random.sample(ids, min(samples, len(ids))):
            start = time.perf_counter()
            response = await client.get(f"/jobs/{job_id}")
            times.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200
    return sorted(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs to store")
    parser.add_argument(
        "--single", type=int, default=2_000, help="of them, submitted one per request"
    )
    parser.add_argument("--batch", type=int, default=500, help="jobs per request for the rest")
    parser.add_argument("--clients", type=int, default=8, help="concurrent submitters")
    parser.add_argument("--samples", type=int, default=1000, help="GET /jobs/{id} samples")
    args = parser.parse_args()

    target_port, foreman_port = free_port(), free_port()
    target, url = f"http://127.0.0.1:{target_port}", f"http://127.0.0.1:{foreman_port}"
    standin_args = ["standin", "--listen", f"127.0.0.1:{target_port}", "--log-level", "warning"]
    with (
        tempfile.TemporaryDirectory() as data_dir,
        foreman_process(standin_args),
    ):
        wait_http(f"{target}/api/version")
        env = {
            "FOREMAN_OLLAMA_URL": target,
            "FOREMAN_LISTEN": f"127.0.0.1:{foreman_port}",
            "FOREMAN_DATA_DIR": data_dir,
            "FOREMAN_LOG_LEVEL": "warning",
            "FOREMAN_MAX_JOBS": str(args.jobs * 2),
        }
        with foreman_process(["serve"], env) as foreman:
            wait_http(f"{url}/readyz")
            httpx2.post(f"{target}/_standin/freeze")  # the first job hangs: the rest stay queued
            time.sleep(0.5)
            before = rss_mb(foreman.pid)
            singles, single_seconds = trio.run(enqueue, url, args.single, args.clients, 1)
            batched, seconds = trio.run(
                enqueue, url, args.jobs - len(singles), args.clients, args.batch
            )
            ids = singles + batched
            after = rss_mb(foreman.pid)
            times = trio.run(get_latencies, url, ids, args.samples)
            httpx2.post(f"{target}/_standin/thaw")
            size = os.path.getsize(os.path.join(data_dir, "foreman.db"))

    rate, single_rate = len(batched) / seconds, len(singles) / single_seconds
    p50, p99 = statistics.median(times), times[int(len(times) * 0.99) - 1]
    growth = after - before
    rows = [
        ("enqueue, one job per POST /jobs", f"{single_rate:,.0f} jobs/s", None, ""),
        (
            f"enqueue, {args.batch} jobs per POST /jobs",
            f"{rate:,.0f} jobs/s",
            rate >= 1000,
            ">= 1,000 jobs/s",
        ),
        (f"GET /jobs/{{id}} p50, {len(ids):,} stored", f"{p50:.2f} ms", p50 < 5, "< 5 ms"),
        (f"GET /jobs/{{id}} p99, {len(ids):,} stored", f"{p99:.2f} ms", None, ""),
        ("RSS idle", f"{before:.1f} MB", None, ""),
        (f"RSS growth, {len(ids):,} stored", f"{growth:+.1f} MB", growth < 50, "< 50 MB"),
        ("foreman.db", f"{size / 1e6:.1f} MB", None, ""),
    ]
    print(f"\n{len(ids):,} jobs, {args.clients} submitters, {len(times)} GET samples\n")
    print("| measure | value | goal | |")
    print("|---|---|---|---|")
    for name, value, ok, goal in rows:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"| {name} | {value} | {goal} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
