"""Replicas as real processes: three ``foreman serve`` on one PostgreSQL in front of one
``foreman standin``; clients are real HTTP clients in threads."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx

from .conftest import chat_body
from .processes import answering, free_port, process, standin, until
from .test_jobs_processes import webhook_receiver

#: Stand-in replies long enough that a chat is still streaming when the next arrives.
SLOW = ("--reply-tokens", "600", "--token-rate", "20")  # 30 s


@contextmanager
def replicas(target: str, url: str, tmp: Path, count: int = 3) -> Iterator[list[tuple[str, Any]]]:
    """``count`` replicas started together (not one after the other), once all are ready."""
    with ExitStack() as stack:
        started = []
        for n in range(count):
            base = f"http://127.0.0.1:{free_port()}"
            env = {
                "FOREMAN_OLLAMA_URL": target,
                "FOREMAN_LISTEN": base[7:],
                "FOREMAN_DATA_DIR": str(tmp / f"r{n}"),
                "FOREMAN_LOG_LEVEL": "warning",
                "FOREMAN_DATABASE_URL": url,
                "FOREMAN_SECRET_KEY": "shared",
                "FOREMAN_TOKEN": "t",
                "FOREMAN_REPLICA_ID": f"r{n}",
            }
            started.append((base, stack.enter_context(process("serve", env=env))))
        for base, proc in started:
            until(
                lambda base=base, proc=proc: proc.poll() is not None or answering(f"{base}/readyz"),
                60,
                f"replica {base}",
            )
            assert proc.poll() is None, f"replica {base} stopped: status {proc.returncode}"
        yield started


AUTH = {"authorization": "Bearer t"}


def chat(base: str, text: str) -> int:
    with httpx.Client(base_url=base, timeout=60) as client:
        return client.post("/api/chat", json=chat_body(text=text), headers=AUTH).status_code


def waiting(bases: list[str]) -> int:
    return sum(httpx.get(f"{b}/healthz", headers=AUTH).json()["chats"]["waiting"] for b in bases)


def test_sixty_chats_round_robin_one_at_a_time_in_arrival_order(
    tmp_path: Path, pg_cluster: Any
) -> None:
    with (
        standin("--reply-tokens", "4", "--token-rate", "400") as target,
        replicas(target, pg_cluster.new_database(), tmp_path) as procs,
    ):
        bases = [base for base, _ in procs]
        with ThreadPoolExecutor(60) as pool:
            statuses = list(pool.map(lambda n: chat(bases[n % 3], f"chat {n}"), range(60)))
        assert statuses == [200] * 60
        stats = httpx.get(f"{target}/_standin/stats").json()
        assert stats["chats_total"] == 60 and stats["max_chats_in_flight"] == 1

        # arrival order within the lane, across replicas: the slot is held while they queue
        httpx.post(f"{target}/_standin/reset")
        httpx.post(f"{target}/_standin/freeze")
        threads = [threading.Thread(target=chat, args=(bases[0], "first"))]
        threads[0].start()
        health = f"{bases[0]}/healthz"
        until(lambda: httpx.get(health, headers=AUTH).json()["chats"]["in_flight"], 10)
        for n in range(9):
            threads.append(threading.Thread(target=chat, args=(bases[n % 3], f"in order {n}")))
            threads[-1].start()
            until(lambda n=n: waiting(bases) == n + 1, 10, f"chat {n} waiting")
        httpx.post(f"{target}/_standin/thaw")
        for thread in threads:
            thread.join(30)
        prompts = list(httpx.get(f"{target}/_standin/stats").json()["prompts"])
        assert prompts == ["first", *(f"in order {n}" for n in range(9))]

        # a user made through A authenticates on B at once; a sign-in on A opens B's pages
        made = httpx.post(f"{bases[0]}/admin/api/users", json={"name": "ada"}, headers=AUTH)
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        tags = httpx.get(f"{bases[1]}/api/tags", headers={"authorization": f"Bearer {key}"})
        assert tags.status_code == 200
        with httpx.Client() as browser:  # cookies go to every port of 127.0.0.1, as browsers do
            login = browser.get(f"{bases[0]}/admin/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
            assert csrf is not None
            signed = browser.post(
                f"{bases[0]}/admin/login",
                data={"key": key, "csrf_token": csrf.group(1), "next": "/admin/"},
                headers={"origin": bases[0]},
            )
            assert signed.status_code == 303, signed.text
            page = browser.get(f"{bases[2]}/admin/backends")
            assert page.status_code == 200 and "ada" in page.text


def test_a_sigkilled_replica_holding_the_slot_mid_stream_frees_it(
    tmp_path: Path, pg_cluster: Any
) -> None:
    with (
        standin(*SLOW) as target,
        replicas(target, pg_cluster.new_database(), tmp_path, 2) as ((a, a_proc), (b, _)),
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{a}/api/chat", json=chat_body(), headers=AUTH) as held,
    ):
        lines = held.iter_lines()  # kept: a dropped iterator would close the stream
        next(lines)  # A streams: it holds the slot
        started: list[float] = []

        def second() -> None:
            with (
                httpx.Client(timeout=60) as other,
                other.stream(
                    "POST", f"{b}/api/chat", json=chat_body(text="after"), headers=AUTH
                ) as response,
            ):
                next(response.iter_lines())
                started.append(time.monotonic())

        thread = threading.Thread(target=second)
        thread.start()
        until(lambda: waiting([b]) == 1, 10, "B's chat waiting")
        killed = time.monotonic()
        os.kill(a_proc.pid, signal.SIGKILL)
        thread.join(15)
        assert started and started[0] - killed < 10.0


def test_a_hundred_jobs_across_replicas_one_sigkilled_each_succeeds_once(
    tmp_path: Path, pg_cluster: Any
) -> None:
    with (
        standin("--reply-tokens", "100", "--token-rate", "200") as target,
        webhook_receiver() as (hook, received),
        replicas(target, pg_cluster.new_database(), tmp_path) as procs,
    ):
        bases = [base for base, _ in procs]
        ids: list[str] = []

        def job(n: int) -> dict[str, Any]:
            # every job answers in 25 ms but job 50 (0.5 s): the one cut by the SIGKILL
            options = {} if n == 50 else {"options": {"num_predict": 5}}
            request = chat_body(text=f"job {n}", **options)
            return {"endpoint": "chat", "request": request, "state_webhook_url": hook}

        for part, base in zip((range(34), range(34, 67), range(67, 100)), bases, strict=True):
            answer = httpx.post(f"{base}/jobs", json=[job(n) for n in part], headers=AUTH)
            assert answer.status_code == 202, answer.text
            ids += [queued["id"] for queued in answer.json()["jobs"]]
        assert len(ids) == 100

        def runner_of_job_50() -> list[int]:
            """[the index of the replica running job 50] once the stand-in generates it."""
            if "job 50" not in httpx.get(f"{target}/_standin/stats").json()["prompts"]:
                return []
            health = [httpx.get(f"{base}/healthz", headers=AUTH).json() for base in bases]
            return [n for n, h in enumerate(health) if h["jobs"]["running"] == ids[50]]

        [victim] = until(runner_of_job_50, 60, "job 50 generating")
        os.kill(procs[victim][1].pid, signal.SIGKILL)  # mid-job
        alive = bases[(victim + 1) % 3]
        until(lambda: _count(alive, "succeeded") == 100, 120, "every job done")
        for job_id in ids:
            job = httpx.get(f"{alive}/jobs/{job_id}", headers=AUTH).json()
            assert job["state"] == "succeeded", job
        prompts = httpx.get(f"{target}/_standin/stats").json()["prompts"]
        assert prompts == {f"job {n}": 2 if n == 50 else 1 for n in range(100)}
        until(
            lambda: {m["id"] for m in received if m["state"] == "succeeded"} == set(ids),
            30,
            "every webhook",
        )
        finished = [m["id"] for m in received if m["state"] == "succeeded"]
        assert len(finished) == 100  # each delivered once, by one replica


def _count(base: str, state: str) -> int:
    page = httpx.get(f"{base}/jobs", params={"state": state, "limit": 500}, headers=AUTH)
    return len(page.json()["jobs"])
