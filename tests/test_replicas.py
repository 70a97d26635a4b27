"""Several replicas on one PostgreSQL database, in one process: each an open_foreman of
its own (its own store pool, gates, workers) in front of one stand-in."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx2 as httpx
import pytest
import trio

from foreman.jobs import records
from foreman.jobs.replicas import RENEW
from foreman.standins.ollama import StandIn

from .conftest import Foreman, chat_body, open_foreman, reads_for_unknown_keys
from .test_clustergate import kill_the_holder
from .test_jobs import Receiver


@pytest.fixture
def standin() -> StandIn:
    return StandIn(token_rate=200.0)  # quick chats: the hand-overs are what is tested


@pytest.fixture
async def url(pg_cluster: Any) -> str:
    return pg_cluster.new_database()


async def succeeded(fm: Foreman, job_id: str) -> dict[str, Any]:
    """The job once it has succeeded (asked every 50 ms; the caller sets the deadline)."""
    while (job := (await fm.client.get(f"/jobs/{job_id}")).json())["state"] != "succeeded":  # noqa: ASYNC110
        await trio.sleep(0.05)
    return job


@asynccontextmanager
async def replicas(
    nursery: trio.Nursery, standin: StandIn, url: str, count: int, **changes: Any
) -> AsyncIterator[tuple[list[Foreman], Receiver]]:
    receiver = Receiver()
    async with AsyncExitStack() as stack:
        found = [
            await stack.enter_async_context(
                open_foreman(
                    nursery,
                    standin,
                    database_url=url,
                    secret_key="shared secret",
                    webhook_transport=httpx.MockTransport(receiver.handle),
                    **changes,
                )
            )
            for _ in range(count)
        ]
        yield found, receiver


async def test_chats_on_every_replica_never_overlap_at_the_target(
    nursery: trio.Nursery, standin: StandIn, url: str
) -> None:
    async with replicas(nursery, standin, url, 3) as (fms, _):

        async def chat(fm: Foreman, n: int) -> None:
            response = await fm.client.post("/api/chat", json=chat_body(text=f"chat {n}"))
            assert response.status_code == 200, response.text

        async with trio.open_nursery() as chats:
            for n in range(12):
                chats.start_soon(chat, fms[n % 3], n)
        assert standin.chats_total == 12
        assert standin.max_chats_in_flight == 1


async def test_jobs_submitted_across_replicas_run_once_each_with_their_webhooks(
    nursery: trio.Nursery, standin: StandIn, url: str
) -> None:
    async with replicas(nursery, standin, url, 2) as (fms, receiver):
        ids = []
        for n in range(16):
            body = {
                "endpoint": "chat",
                "request": chat_body(text=f"job {n}", stream=False),
                "state_webhook_url": "http://hooks.test/job",
            }
            response = await fms[n % 2].client.post("/jobs", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        with trio.fail_after(60):
            for job_id in ids:
                await succeeded(fms[0], job_id)
            while any(receiver.states(job_id)[-1:] != ["succeeded"] for job_id in ids):  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert standin.chats_total == 16 and standin.max_chats_in_flight == 1
        for job_id in ids:  # each state once, in order, whichever replica sent it
            assert receiver.states(job_id) == ["queued", "running", "succeeded"]
        ran_on = [fm.gw.jobs.finished["succeeded"] for fm in fms]  # type: ignore[union-attr]
        assert sum(ran_on) == 16
        artifact = await fms[1].client.get(f"/jobs/{ids[0]}/artifacts/response.json")
        assert artifact.status_code == 200 and artifact.json()["done"] is True


async def test_a_job_whose_replica_died_is_taken_over_once_its_lease_runs_out(
    nursery: trio.Nursery, standin: StandIn, url: str
) -> None:
    async with replicas(nursery, standin, url, 1) as ((fm,), _):
        response = await fm.client.post("/jobs", json={"endpoint": "embed", "request": {
            "model": "nomic-embed-text", "input": "x"}})  # fmt: skip
        job_id = response.json()["id"]
        with trio.fail_after(10):
            await succeeded(fm, job_id)

        def died_running_it(db: Any) -> None:  # as a replica SIGKILLed mid-run leaves it
            db.execute(
                "UPDATE jobs SET state = 'running', runner = 'ghost', lease_until = ?,"
                " finished_at = NULL WHERE id = ?",
                (time.time() + 1.0, job_id),
            )

        assert fm.gw.jobs is not None
        await fm.gw.jobs.store.call(died_running_it)
        with trio.fail_after(RENEW * 3):
            job = await succeeded(fm, job_id)
        assert job["attempts"] == 2  # ran again, as after a restart
        assert await fm.gw.jobs.store.call(records.count_queued) == 0


async def test_users_keys_sessions_and_backends_hold_on_every_replica(
    nursery: trio.Nursery, standin: StandIn, url: str
) -> None:
    from .test_admin_pages import ADMIN_KEY, browser, csrf_of, make_user, sign_in

    async with replicas(nursery, standin, url, 2, token=ADMIN_KEY) as ((a, b), _):
        key = await make_user(a, "ada")  # made on A, used on B at once
        tags = await b.client.get("/api/tags", headers={"authorization": f"Bearer {key}"})
        assert tags.status_code == 200

        async with browser(a) as on_a:  # a sign-in on A opens a page on B
            await sign_in(on_a, key)
            cookie = {"cookie": f"foreman_session={on_a.cookies['foreman_session']}"}
            page = await b.client.get("/admin/backends", headers=cookie)
            assert page.status_code == 200 and "ada" in page.text

            admin = {"authorization": f"Bearer {ADMIN_KEY}"}
            added = await a.client.post(  # a backend added on A
                "/admin/api/backends",
                json={"name": "claude", "type": "anthropic", "api_key": "sk-x"},
                headers=admin,
            )
            assert added.status_code == 201, added.text
            revoked = await a.client.delete("/admin/api/users/ada", headers=admin)
            assert revoked.status_code == 200, revoked.text
            with trio.fail_after(1.0):  # ... and the revocation hold on B within a second
                while not (  # noqa: ASYNC110
                    b.gw.backends is not None
                    and "claude" in {r.name for r in b.gw.backends.records.values()}
                    and (
                        await b.client.get("/api/tags", headers={"authorization": f"Bearer {key}"})
                    ).status_code
                    == 401
                ):
                    await trio.sleep(0.02)
            page = await b.client.get("/admin/backends", headers=cookie)
            assert page.status_code == 303  # the revoked user's session is closed on B too

        async with browser(a) as on_a:  # a sign-out on A closes the session on B
            await sign_in(on_a, ADMIN_KEY)
            cookie = {"cookie": f"foreman_session={on_a.cookies['foreman_session']}"}
            page = await b.client.get("/admin/", headers=cookie)
            assert page.status_code == 200
            out = await on_a.post("/admin/logout", data={"csrf_token": csrf_of(page.text)})
            assert out.status_code == 303
            with trio.fail_after(1.0):
                while (await b.client.get("/admin/", headers=cookie)).status_code == 200:  # noqa: ASYNC110
                    await trio.sleep(0.02)


async def test_unknown_keys_on_a_shared_database_cost_one_read_of_the_store(
    nursery: trio.Nursery, standin: StandIn, url: str
) -> None:
    from .test_admin_pages import ADMIN_KEY

    async with replicas(nursery, standin, url, 1, token=ADMIN_KEY) as ((fm,), _):
        assert fm.gw.users is not None and fm.gw.users.shared
        flooded, not_ours = await reads_for_unknown_keys(fm)
        assert 1 <= flooded <= 2  # (2: the 5 s refresh may fall within the flood)
        assert not_ours == 0  # not a foreman key: no read


async def test_health_shows_the_database_and_readyz_follows_it(
    nursery: trio.Nursery, standin: StandIn, url: str, pg_cluster: Any
) -> None:
    from foreman.store import REPLICA

    async with replicas(nursery, standin, url, 1) as ((fm,), _):
        health = (await fm.client.get("/healthz")).json()
        assert health["replica"] == REPLICA
        assert health["database"] == {
            "kind": "postgresql", "location": url, "reachable": True, "error": None}  # fmt: skip
        metrics = (await fm.client.get("/metrics")).text
        assert f'foreman_replica_info{{database="postgresql",replica="{REPLICA}"}} 1.0' in metrics
        assert (await fm.client.get("/readyz")).status_code == 200

        name = url.rsplit("/", 1)[1]  # the database goes away: no session, no new one
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        pg_cluster.admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        with trio.fail_after(10):
            while (ready := await fm.client.get("/readyz")).status_code != 503:  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert ready.json()["database"]["reachable"] is False
        refused = await fm.client.post("/api/chat", json=chat_body())  # the gate fails closed
        assert refused.status_code == 503
        assert refused.json()["error"].startswith("foreman's database is unreachable")
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        with trio.fail_after(15):
            while (await fm.client.get("/readyz")).status_code != 200:  # noqa: ASYNC110
                await trio.sleep(0.1)


def test_the_replicas_compose_file_shares_one_database_behind_a_balancer() -> None:
    import pathlib

    import yaml

    root = pathlib.Path(__file__).resolve().parent.parent
    compose = yaml.safe_load((root / "compose.replicas.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "ollama", "foreman-a", "foreman-b", "balancer"}
    replicas = [services["foreman-a"], services["foreman-b"]]
    for replica in replicas:
        env = replica["environment"]
        assert env["FOREMAN_DATABASE_URL"].startswith("postgresql://foreman:")
        assert env["FOREMAN_SECRET_KEY"].startswith("${FOREMAN_SECRET_KEY:?")
        assert "ports" not in replica  # only the balancer is published
    assert {r["environment"]["FOREMAN_REPLICA_ID"] for r in replicas} == {"foreman-a", "foreman-b"}
    assert services["balancer"]["ports"] == ["8080:8080"]
    conf = (root / "deploy/balancer/nginx.conf").read_text()
    assert "server foreman-a:8080" in conf and "server foreman-b:8080" in conf
    assert "proxy_buffering off;" in conf  # streams pass chunk by chunk


async def test_a_job_cancelled_through_another_replica_stops_where_it_runs(
    nursery: trio.Nursery, standin: StandIn, url: str
) -> None:
    async with replicas(nursery, standin, url, 2) as ((a, b), receiver):
        standin.freeze()  # the job's request hangs at the target: it stays running
        body = {"endpoint": "chat", "request": chat_body(), "state_webhook_url": "http://h/"}
        job_id = (await a.client.post("/jobs", json=body)).json()["id"]
        with trio.fail_after(10):
            while job_id not in a.gw.jobs.running and job_id not in b.gw.jobs.running:  # type: ignore[union-attr]  # noqa: ASYNC110
                await trio.sleep(0.02)
        runner, other = (a, b) if job_id in a.gw.jobs.running else (b, a)  # type: ignore[union-attr]
        cancelled = await other.client.delete(f"/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        with trio.fail_after(RENEW * 3):  # the replica running it lets go
            while job_id in runner.gw.jobs.running:  # type: ignore[union-attr]  # noqa: ASYNC110
                await trio.sleep(0.05)
        standin.thaw()
        await trio.sleep(0.5)
        assert (await runner.client.get(f"/jobs/{job_id}")).json()["state"] == "cancelled"
        assert receiver.states(job_id) == ["queued", "running", "cancelled"]


async def test_a_chat_whose_slot_is_lost_mid_stream_ends_with_one_error_line(
    nursery: trio.Nursery, url: str, pg_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    standin = StandIn(token_rate=20.0, reply_tokens=1000)  # 50 s of reply
    async with replicas(nursery, standin, url, 1) as ((fm,), _):
        caplog.set_level(logging.INFO, logger="foreman.access")
        with trio.fail_after(10):
            async with fm.client.stream("POST", "/api/chat", json=chat_body()) as response:
                assert response.status_code == 200
                lines = []
                async for line in response.aiter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == 2:
                        kill_the_holder(pg_cluster, url)
        assert lines[-1]["error"].startswith("foreman lost the gate's database session")
        assert len(lines) > 2 and not any("error" in line or line["done"] for line in lines[:-1])
        await trio.sleep(0.2)
        assert standin.chats_in_flight == 0  # the upstream request was aborted
        (chat,) = [r for r in caplog.records if getattr(r, "path", "") == "/api/chat"]
        assert chat.outcome == "error"  # type: ignore[attr-defined]
        retried = await fm.client.post("/api/chat", json=chat_body(options={"num_predict": 2}))
        assert retried.status_code == 200, retried.text  # the slot is free again


async def test_a_job_whose_slot_is_lost_goes_back_to_the_queue_and_succeeds_later(
    nursery: trio.Nursery, url: str, pg_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    standin = StandIn(token_rate=20.0, reply_tokens=20)  # a second of reply
    async with replicas(nursery, standin, url, 1) as ((fm,), _):
        assert fm.gw.jobs is not None
        body = {"endpoint": "chat", "request": chat_body(stream=False)}
        job_id = (await fm.client.post("/jobs", json=body)).json()["id"]
        with trio.fail_after(10):
            while not standin.chats_in_flight:  # noqa: ASYNC110
                await trio.sleep(0.02)
            kill_the_holder(pg_cluster, url)
            job = await succeeded(fm, job_id)
        assert job["attempts"] == 1  # the lost run did not count
        assert standin.chats_total == 2 and standin.max_chats_in_flight == 1
        lost = [r for r in caplog.records if "goes back to the queue" in r.getMessage()]
        assert [r.levelno for r in lost if r.name == "foreman.jobs"] == [logging.WARNING]
