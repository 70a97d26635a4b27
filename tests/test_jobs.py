"""The durable job queue: /jobs, lanes, cancellation, artifacts, webhooks, restarts."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
import pytest
import trio
import trio.testing

from foreman.standins.ollama import Faults, StandIn

from .conftest import Foreman, chat_body, open_foreman

pytestmark = pytest.mark.usefixtures("database")  # every test on SQLite and on PostgreSQL

MASK = re.compile(rb'("created_at":"[^"]*"|"[a-z_]*duration":\d+)')


@dataclass
class Receiver:
    """A webhook receiver: records every POST; answers ``status`` (a list is used up first)."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, Any], bytes, dict[str, str]]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            body = json.loads(request.content)
            self.received.append((body, request.content, dict(request.headers)))
        return httpx.Response(status)

    def states(self, job_id: str) -> list[str]:
        return [body["state"] for body, _, _ in self.received if body["id"] == job_id]


class Recorder(httpx.AsyncBaseTransport):
    """Wraps the way to the stand-in and records the chats it is sent, in order."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.chats: list[str] = []
        self.on_chat: Callable[[int], object] = lambda count: None  # called as each arrives

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path in ("/api/chat", "/api/generate"):
            body = json.loads(await request.aread())
            self.chats.append(body.get("messages", [{}])[-1].get("content") or body.get("prompt"))
            self.on_chat(len(self.chats))
        return await self.inner.handle_async_request(request)


@asynccontextmanager
async def foreman_with_jobs(
    nursery: trio.Nursery, standin: StandIn, **changes: Any
) -> AsyncIterator[tuple[Foreman, Receiver, Recorder]]:
    receiver = Receiver()
    recorder = Recorder(standin.transport(nursery))
    async with open_foreman(
        nursery,
        standin,
        transport=recorder,
        webhook_transport=httpx.MockTransport(receiver.handle),
        **changes,
    ) as fm:
        yield fm, receiver, recorder


async def submit(fm: Foreman, endpoint: str = "chat", **fields: Any) -> dict[str, Any]:
    body = {"endpoint": endpoint, "request": chat_body(), **fields}
    response = await fm.client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/jobs/{response.json()['id']}"
    return response.json()


async def wait_state(fm: Foreman, job_id: str, *states: str) -> dict[str, Any]:
    with trio.fail_after(600):
        while True:
            job = (await fm.client.get(f"/jobs/{job_id}")).json()
            if job["state"] in states:
                return job
            await trio.sleep(0.05)


async def test_a_chat_job_runs_and_keeps_both_artifacts(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with foreman_with_jobs(nursery, standin) as (fm, receiver, _):
        job = await submit(fm, metadata={"doc": 7}, state_webhook_url="https://hooks.example/x")
        assert job["state"] == "queued" and job["priority"] == "batch"
        assert job["metadata"] == {"doc": 7} and job["created_at"].endswith("Z")
        done = await wait_state(fm, job["id"], "succeeded", "failed")
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 1 and done["started_at"] and done["finished_at"]
        names = {a["name"]: a for a in done["artifacts"]}
        assert set(names) == {"response.json", "stream.ndjson"}
        streamed = await fm.client.get(names["stream.ndjson"]["url"])
        assert streamed.headers["content-type"] == "application/x-ndjson"
        assert len(streamed.content) == names["stream.ndjson"]["size"]
        direct_stream = await fm.target.post("/api/chat", json=chat_body())
        assert MASK.sub(b"T", streamed.content) == MASK.sub(b"T", direct_stream.content)
        answer = await fm.client.get(names["response.json"]["url"])
        direct = await fm.target.post("/api/chat", json=chat_body(stream=False))
        assert MASK.sub(b"T", answer.content) == MASK.sub(b"T", direct.content)
        await trio.testing.wait_all_tasks_blocked()
        assert receiver.states(job["id"]) == ["queued", "running", "succeeded"]
        webhook = (await fm.client.get(f"/jobs/{job['id']}")).json()["webhook"]
        assert webhook == {
            "url": "https://hooks.example/x",
            "deliveries": 3,
            "last_status": 200,
            "last_error": None,
        }


async def test_generate_and_non_stream_jobs_answer_as_ollama_would(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with foreman_with_jobs(nursery, standin) as (fm, _, _):
        generate = {"model": "llama3.2", "prompt": "a <tag> & more"}
        streamed = await submit(fm, "generate", request=generate)
        whole = await submit(fm, "generate", request={**generate, "stream": False})
        for job in (streamed, whole):
            done = await wait_state(fm, job["id"], "succeeded", "failed")
            assert done["state"] == "succeeded", done
            answer = await fm.client.get(f"/jobs/{job['id']}/artifacts/response.json")
            direct = await fm.target.post("/api/generate", json={**generate, "stream": False})
            assert MASK.sub(b"T", answer.content) == MASK.sub(b"T", direct.content)
        names = [a["name"] for a in done["artifacts"]]
        assert names == ["response.json"]  # a "stream": false job has no stream


async def test_interactive_before_batch_fifo_in_each_lane_sync_callers_first(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(token_rate=1.0, reply_tokens=3)
    async with foreman_with_jobs(nursery, standin) as (fm, _, recorder):
        async with trio.open_nursery() as callers:

            async def sync_chat(text: str) -> None:
                response = await fm.client.post("/api/chat", json=chat_body(text=text))
                assert response.status_code == 200

            callers.start_soon(sync_chat, "holder")  # holds the slot for seconds
            await trio.sleep(0.5)
            b1 = await submit(fm, request=chat_body(text="b1"))
            b2 = await submit(fm, request=chat_body(text="b2"))
            callers.start_soon(sync_chat, "s1")
            await trio.sleep(0.1)
            callers.start_soon(sync_chat, "s2")
            await trio.sleep(0.1)
            i1 = await submit(fm, request=chat_body(text="i1"), priority="interactive")
            assert (await fm.client.get(f"/jobs/{b2['id']}")).json()["position"] == 2
        for job in (b1, b2, i1):
            await wait_state(fm, job["id"], "succeeded")
    assert recorder.chats == ["holder", "s1", "s2", "i1", "b1", "b2"]
    assert standin.max_chats_in_flight == 1


async def test_ten_sync_chats_and_thirty_jobs_never_overlap_at_the_target(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(token_rate=20.0, reply_tokens=3)
    async with foreman_with_jobs(nursery, standin) as (fm, _, _):
        jobs = []
        async with trio.open_nursery() as callers:
            for i in range(30):
                jobs.append(await submit(fm, request=chat_body(text=f"job {i}")))
                if i % 3 == 0:
                    callers.start_soon(
                        lambda i=i: fm.client.post("/api/chat", json=chat_body(text=f"sync {i}"))
                    )
        for job in jobs:
            assert (await wait_state(fm, job["id"], "succeeded", "failed"))["state"] == "succeeded"
    assert standin.chats_total == 40
    assert standin.max_chats_in_flight == 1


async def test_cancel_a_waiting_job_a_running_job_and_not_a_finished_one(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(token_rate=1.0, reply_tokens=100)
    async with foreman_with_jobs(nursery, standin) as (fm, receiver, _):
        running = await submit(fm, state_webhook_url="http://hooks/x")
        waiting = await submit(fm)
        await wait_state(fm, running["id"], "running")
        cancelled = await fm.client.delete(f"/jobs/{waiting['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        start = trio.current_time()
        cancelled = await fm.client.delete(f"/jobs/{running['id']}")
        assert cancelled.json()["state"] == "cancelled"
        assert trio.current_time() - start < 1.0  # the worker is free within a second
        await trio.testing.wait_all_tasks_blocked()
        assert standin.chats_in_flight == 0  # the upstream request was aborted
        assert fm.gw.gate.statistics().in_flight == 0
        assert standin.chats_total == 1  # the waiting one never ran
        again = await fm.client.delete(f"/jobs/{running['id']}")
        assert again.status_code == 409 and "already cancelled" in again.json()["error"]
        assert (await fm.client.delete("/jobs/nope")).status_code == 404
        await trio.sleep(1)  # the webhooks go out beside the queue
        assert receiver.states(running["id"]) == ["queued", "running", "cancelled"]
        metrics = (await fm.client.get("/metrics")).text
        assert 'foreman_jobs_finished_total{state="cancelled"} 2.0' in metrics
        assert 'foreman_jobs_queued{lane="batch"} 0.0' in metrics


async def test_webhooks_are_signed_retried_in_order_and_survive_a_restart(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    receiver = Receiver(statuses=[500, 503])  # the receiver is down at first
    data_dir = None
    async with open_foreman(
        nursery,
        standin,
        webhook_transport=httpx.MockTransport(receiver.handle),
        webhook_secret="hush",
    ) as fm:
        data_dir = fm.gw.settings.data_dir
        job = await submit(fm, state_webhook_url="https://hooks.example/in")
        await wait_state(fm, job["id"], "succeeded")
        await trio.sleep(10)  # two failures: 1 s, then 2 s of back-off
        assert receiver.states(job["id"]) == ["queued", "running", "succeeded"]
        for body, raw, headers in receiver.received:
            digest = hmac.new(b"hush", raw, hashlib.sha256).hexdigest()
            assert headers["x-foreman-signature"] == f"sha256={digest}"
            assert set(body) == {"id", "state", "previous_state", "at", "job_url"}
            assert body["job_url"] == f"http://localhost:8080/jobs/{job['id']}"
        assert [b["previous_state"] for b, _, _ in receiver.received] == [None, "queued", "running"]
        # a delivery still pending when foreman stops is made after it starts again
        receiver.statuses = [500] * 100
        second = await submit(fm, state_webhook_url="https://hooks.example/in")
        await wait_state(fm, second["id"], "succeeded")
        assert receiver.states(second["id"]) == []  # still pending
    receiver.statuses = []
    async with open_foreman(
        nursery, standin, webhook_transport=httpx.MockTransport(receiver.handle), data_dir=data_dir
    ) as fm:
        # the retry falls due within its back-off (plus what the first run's mock
        # clock ran ahead of the wall clock, which a restart reads again)
        await trio.sleep(60)
        assert receiver.states(second["id"]) == ["queued", "running", "succeeded"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"endpoint": "pull", "request": {"model": "llama3.2"}}, 422, "endpoint: one of"),
        ({"endpoint": "chat", "request": "hi"}, 422, "request: "),
        ({"endpoint": "chat", "request": chat_body(), "priority": "urgent"}, 422, "priority: "),
        ({"endpoint": "chat", "request": chat_body(), "metadata": [1]}, 422, "metadata: "),
        *(
            (
                {"endpoint": "chat", "request": chat_body(), "state_webhook_url": url},
                422,
                "state_webhook_url: ",
            )
            # each of these once stopped foreman at its first delivery (issue 16)
            for url in (
                "ftp://x/y",
                "http://x:abc/",
                "http://x:99999/",
                "http://x/" + "a" * 65_537,
                "http://x/\r\nX: y",
                "http://x/\x00",
                "http://[::1/",
                "http:///path",
                7,
            )
        ),
        ({"endpoint": "chat", "request": {"messages": []}}, 400, "model is required"),
        ({"endpoint": "chat", "request": {"model": "a:b:c"}}, 400, "invalid model name"),
        ({"endpoint": "chat", "request": chat_body("nope")}, 404, "model 'nope' not found"),
        (
            {"endpoint": "embed", "request": {"model": "nope", "input": "x"}},
            404,
            'model "nope" not found, try pulling it first',
        ),
    ],
)
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # refused before the store
async def test_a_bad_submission_is_refused_as_the_sync_path_would(
    fm: Foreman, autojump_clock: trio.abc.Clock, body: dict, status: int, error: str
) -> None:
    response = await fm.client.post("/jobs", json=body)
    assert response.status_code == status
    assert response.json()["error"].startswith(error)
    assert (await fm.client.get("/jobs")).json()["jobs"] == []


async def test_a_batch_is_stored_all_or_nothing_and_runs_in_order(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with foreman_with_jobs(nursery, standin, max_jobs=5) as (fm, _, recorder):
        batch = [{"endpoint": "chat", "request": chat_body(text=f"doc {i}")} for i in range(3)]
        bad = await fm.client.post("/jobs", json=[*batch, {"endpoint": "chat", "request": {}}])
        assert bad.status_code == 400 and bad.json() == {"error": "jobs[3]: model is required"}
        unknown = await fm.client.post("/jobs", json=[{**batch[0], "request": chat_body("nope")}])
        assert unknown.json() == {"error": "jobs[0]: model 'nope' not found"}
        assert (await fm.client.post("/jobs", json=[])).status_code == 422
        too_many = await fm.client.post("/jobs", json=batch * 2)  # 6 > FOREMAN_MAX_JOBS=5
        assert too_many.status_code == 429
        assert (await fm.client.get("/jobs")).json()["jobs"] == []  # nothing was stored
        response = await fm.client.post("/jobs", json=batch)
        assert response.status_code == 202
        stored = response.json()["jobs"]
        assert [set(job) for job in stored] == [{"id", "state", "url"}] * 3
        for job in stored:
            done = await wait_state(fm, job["id"], "succeeded", "failed")
            assert done["state"] == "succeeded" and job["url"] == f"/jobs/{job['id']}"
        assert recorder.chats == ["doc 0", "doc 1", "doc 2"]


async def test_queued_jobs_wait_for_an_unreachable_target_and_the_queue_bounds_them(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with foreman_with_jobs(nursery, standin, max_jobs=2) as (fm, _, _):
        standin.go_down()
        await fm.gw.inventory.refresh()
        first = await submit(fm)  # the models are known from the last inventory
        second = await submit(fm)
        await trio.sleep(60)
        assert (await fm.client.get(f"/jobs/{first['id']}")).json()["state"] == "queued"
        full = await fm.client.post("/jobs", json={"endpoint": "chat", "request": chat_body()})
        assert full.status_code == 429 and full.headers["retry-after"] == "60"
        assert full.json() == {"error": "too many queued jobs (FOREMAN_MAX_JOBS=2)"}
        standin.come_back()
        for job in (first, second):
            done = await wait_state(fm, job["id"], "succeeded", "failed")
            assert done["state"] == "succeeded" and done["attempts"] == 1
        assert standin.chats_total == 2


async def test_a_target_that_vanishes_mid_run_requeues_without_spending_an_attempt(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with foreman_with_jobs(nursery, standin) as (fm, receiver, recorder):
        standin.faults = Faults(die_after=1)
        recorder.on_chat = lambda n: n == 2 and setattr(standin, "faults", Faults())
        job = await submit(fm, state_webhook_url="http://hooks.example/in")
        done = await wait_state(fm, job["id"], "succeeded", "failed")
        assert done["state"] == "succeeded" and done["attempts"] == 1
        assert len(recorder.chats) == 2  # the first attempt died, the second found it well
        await trio.sleep(1)
        assert receiver.states(job["id"]) == ["queued", "running", "queued", "running", "succeeded"]


async def test_a_job_running_when_foreman_stops_runs_again_after_the_restart(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(token_rate=2.0)  # a long answer (3 s): still running at the stop
    async with open_foreman(nursery, standin) as fm:
        data_dir = fm.gw.settings.data_dir
        job = await submit(fm)
        await wait_state(fm, job["id"], "running")
    async with open_foreman(nursery, standin, data_dir=data_dir) as fm:
        done = await wait_state(fm, job["id"], "succeeded", "failed", "cancelled")
        assert done["state"] == "succeeded" and done["attempts"] == 1
        assert standin.chats_total == 2  # the cut one, and the whole one


async def test_a_target_error_fails_the_job_with_the_targets_error(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    fm.standin.faults = Faults(runner_error_after=1)
    streamed = await submit(fm)
    whole = await submit(fm, request=chat_body(stream=False))
    for job in (streamed, whole):
        done = await wait_state(fm, job["id"], "succeeded", "failed")
        assert done["state"] == "failed"
        assert done["error"].startswith("model runner has unexpectedly stopped")


async def test_jobs_left_running_by_a_dead_process_are_requeued_or_failed(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with foreman_with_jobs(nursery, standin, job_max_attempts=2) as (fm, _, _):
        standin.go_down()
        await fm.gw.inventory.refresh()
        once, twice = await submit(fm), await submit(fm)
        data_dir = fm.gw.settings.data_dir
        assert fm.gw.jobs is not None

        def crash(db: Any) -> None:  # as a SIGKILL mid-run leaves them
            for job, attempts in ((once, 1), (twice, 2)):
                db.execute(
                    "UPDATE jobs SET state = 'running', attempts = ? WHERE id = ?",
                    (attempts, job["id"]),
                )

        await fm.gw.jobs.store.call(crash)
    standin.come_back()
    async with foreman_with_jobs(nursery, standin, job_max_attempts=2, data_dir=data_dir) as (
        fm,
        _,
        _,
    ):
        failed = await wait_state(fm, twice["id"], "failed")  # recovery runs after start
        assert failed["error"] == "interrupted"
        done = await wait_state(fm, once["id"], "succeeded")
        assert done["attempts"] == 2


async def test_embed_jobs_run_beside_the_gate_a_few_at_a_time(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(token_rate=1.0, reply_tokens=50, embed_delay=0.0)
    async with foreman_with_jobs(nursery, standin, embed_job_concurrency=2) as (fm, _, _):
        async with trio.open_nursery() as inner:
            inner.start_soon(lambda: fm.client.post("/api/chat", json=chat_body()))  # long
            await trio.sleep(0.5)
            jobs = [
                await submit(fm, "embed", request={"model": "nomic-embed-text", "input": f"t{i}"})
                for i in range(6)
            ]
            for job in jobs:
                done = await wait_state(fm, job["id"], "succeeded", "failed")
                assert done["state"] == "succeeded"
            assert fm.gw.gate.statistics().in_flight == 1  # the chat still runs
            answer = await fm.client.get(f"/jobs/{jobs[0]['id']}/artifacts/response.json")
            assert len(answer.json()["embeddings"]) == 1
            inner.cancel_scope.cancel()
        assert standin.max_embeds_in_flight <= 2


async def test_listing_pages_newest_first_with_filters(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    fm.standin.go_down()
    await fm.gw.inventory.refresh()
    ids = [(await submit(fm, priority="interactive" if i % 2 else "batch"))["id"] for i in range(5)]
    first = (await fm.client.get("/jobs?limit=2")).json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2]
    rest = (await fm.client.get(f"/jobs?limit=10&cursor={first['next_cursor']}")).json()
    assert [j["id"] for j in rest["jobs"]] == ids[::-1][2:] and rest["next_cursor"] is None
    interactive = (await fm.client.get("/jobs?priority=interactive")).json()["jobs"]
    assert [j["id"] for j in interactive] == [ids[3], ids[1]]
    assert (await fm.client.get("/jobs?state=done")).status_code == 422
    health = (await fm.client.get("/healthz")).json()
    assert health["jobs"] == {"queued": {"interactive": 2, "batch": 3}, "running": None}


async def test_finished_jobs_and_their_artifacts_go_after_the_retention(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with foreman_with_jobs(nursery, standin, job_retention=10.0) as (fm, _, _):
        job = await submit(fm)
        done = await wait_state(fm, job["id"], "succeeded")
        artifact = done["artifacts"][0]["url"]
        assert (await fm.client.get(artifact)).status_code == 200
        await trio.sleep(5)  # the janitor wakes every second here
        assert (await fm.client.get(f"/jobs/{job['id']}")).status_code == 200
        await trio.sleep(10)
        assert (await fm.client.get(f"/jobs/{job['id']}")).status_code == 404
        assert (await fm.client.get(artifact)).status_code == 404
        folder = trio.Path(fm.gw.settings.data_path, "artifacts", job["id"])
        assert not await folder.exists()
