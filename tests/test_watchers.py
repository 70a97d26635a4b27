"""The tags poller, the ps residency watcher and the embedder warm-up supervisor."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import trio

from foreman.standins.ollama import StandIn

from .conftest import Foreman, chat_body, open_foreman


async def test_embedder_is_warmed_on_start(fm: Foreman, autojump_clock: trio.abc.Clock) -> None:
    await fm.gw.residency.warm_wanted.wait_value(False)
    await trio.sleep(0.1)
    assert fm.gw.residency.warmups == 1
    assert "nomic-embed-text:latest" in fm.standin.resident()
    ps = (await fm.target.get("/api/ps")).json()["models"]
    embedder = next(m for m in ps if m["name"] == "nomic-embed-text:latest")
    assert embedder["expires_at"] > "2200"  # keep_alive -1: about 292 years ahead


async def test_poller_degrades_keeps_inventory_and_recovers(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, ps_interval=1000.0) as fm:  # no help from ps
        await check_degrade_and_recover(fm)


async def check_degrade_and_recover(fm: Foreman) -> None:
    inventory = fm.gw.inventory
    await trio.sleep(1)
    known = dict(inventory.models)
    tags_body = inventory.body
    warmups = fm.gw.residency.warmups
    assert known and not inventory.degraded.value

    fm.standin.go_down()
    start = trio.current_time()
    await inventory.degraded.wait_value(True)
    assert trio.current_time() - start <= 30  # within one poll interval
    assert inventory.models == known
    health = await fm.client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert "unreachable" in health.json()["error"]
    ready = await fm.client.get("/readyz")
    assert ready.status_code == 503
    # the last inventory is still served
    tags = await fm.client.get("/api/tags")
    assert (tags.status_code, tags.content) == (200, tags_body)

    fm.standin.come_back()
    fm.standin.unload_all()  # a restarted target has nothing loaded
    await inventory.degraded.wait_value(False)
    assert (await fm.client.get("/readyz")).status_code == 200
    await fm.gw.residency.warm_wanted.wait_value(False)
    await trio.sleep(0.1)
    assert fm.gw.residency.warmups == warmups + 1  # re-warmed after the reconnect
    assert "nomic-embed-text:latest" in fm.standin.resident()


async def test_starting_with_the_target_down_is_degraded_not_fatal(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn()
    standin.go_down()
    async with open_foreman(nursery, standin) as fm:
        assert fm.gw.inventory.degraded.value
        assert (await fm.client.get("/readyz")).status_code == 503
        response = await fm.client.post("/api/chat", json=chat_body())
        assert response.status_code == 503  # cannot check the model: the target is unreachable
        assert (await fm.client.get("/api/tags")).status_code == 503  # no inventory yet
        await trio.sleep(5)
        assert fm.gw.residency.warmups == 0  # still retrying, with back-off
        await trio.sleep(120)  # the warm-up back-off has grown to its maximum
        standin.come_back()
        await fm.gw.inventory.degraded.wait_value(False)
        back = trio.current_time()
        response = await fm.client.post("/api/chat", json=chat_body(stream=False))
        assert response.status_code == 200
        await fm.gw.residency.warm_wanted.wait_value(False)
        await trio.sleep(0.1)
        assert fm.gw.residency.warmups == 1
        assert trio.current_time() - back < 1  # the reconnect cut the back-off short


async def test_a_model_pulled_after_start_is_found_by_the_repoll(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    from foreman.standins.ollama import ModelSpec

    fm.standin.add_model(ModelSpec.completion("newcomer:7b"))
    polls = fm.standin.requests["GET /api/tags"]
    response = await fm.client.post("/api/chat", json=chat_body("newcomer:7b", stream=False))
    assert response.status_code == 200
    assert fm.standin.requests["GET /api/tags"] == polls + 1
    # known now: no further re-poll
    await fm.client.post("/api/chat", json=chat_body("newcomer:7b", stream=False))
    assert fm.standin.requests["GET /api/tags"] == polls + 1


async def test_evicted_embedder_is_noticed_warned_about_and_rewarmed(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # A target with one slot: every chat evicts the embedder.
    standin = StandIn(max_loaded_models=1, token_rate=1.0, reply_tokens=30)
    async with open_foreman(nursery, standin, ps_interval=5.0) as fm:
        await fm.gw.residency.warm_wanted.wait_value(False)
        await trio.sleep(0.1)
        assert standin.resident() == ["nomic-embed-text:latest"]
        warmups = fm.gw.residency.warmups
        with caplog.at_level(logging.WARNING, logger="foreman.backends.ollama.residency"):
            async with trio.open_nursery() as inner:
                inner.start_soon(partial(fm.client.post, "/api/chat", json=chat_body()))
                await trio.sleep(12)  # the chat runs; ps polls see only the worker
                assert standin.resident() == ["llama3.2:latest"]
                assert any("OLLAMA_MAX_LOADED_MODELS=2" in r.message for r in caplog.records)
        await trio.sleep(10)  # the chat is over; the supervisor reloads the embedder
        assert fm.gw.residency.warmups > warmups
        assert standin.resident() == ["nomic-embed-text:latest"]
