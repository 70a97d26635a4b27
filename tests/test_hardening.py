"""Hardening: no way around the gate, no 500 on odd input, no hang on a frozen target,
Ollama's browser protections kept, every request logged once."""

from __future__ import annotations

import gc
import json
import logging
import tracemalloc
from functools import partial

import pytest
import trio
import trio.testing

from foreman.standins.ollama import StandIn

from .asgi import Answer, call
from .conftest import Foreman, chat_body, open_foreman

CHAT = json.dumps(chat_body()).encode()


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/api/./chat",
        b"/api/chat/.",
        b"/api/x/../chat",
        b"/api//chat",
        b"/api/%2e%2e/v1/chat/completions",
        b"/api/%2E/chat",
        b"/api/..%2fv1/models",
        b"/v1//chat/completions",
        b"/v1/./messages",
        b"/_standin/stats",
    ],
)
async def test_dot_segments_and_foreign_paths_are_gins_404_and_never_relayed(
    fm: Foreman, autojump_clock: trio.abc.Clock, raw_path: bytes
) -> None:
    await trio.testing.wait_all_tasks_blocked()  # the embedder's warm-up is done
    before = sum(fm.standin.requests.values())
    answers: list[Answer] = []

    async def one() -> None:
        answers.append(await call(fm.app, "POST", raw_path, body=CHAT))

    async with trio.open_nursery() as nursery:
        for _ in range(5):  # the defect: five of these ran at the target at once
            nursery.start_soon(one)
    for answer in answers:
        assert (answer.status, answer.body) == (404, b"404 page not found")
    assert sum(fm.standin.requests.values()) == before
    assert fm.standin.chats_total == 0


@pytest.mark.parametrize(
    ("method", "raw_path"),
    [
        ("POST", b"/api/chat/"),
        ("POST", b"/API/chat"),
        ("POST", b"/api/Generate"),
        ("POST", b"/api/%63hat"),
        ("POST", b"/api%2Fchat"),
        ("POST", b"/api/generate/"),
        ("GET", b"/api/chat"),
        ("PUT", b"/api/chat"),
    ],
)
async def test_every_other_spelling_of_chat_or_generate_waits_at_the_gate(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, method: str, raw_path: bytes
) -> None:
    standin = StandIn(token_rate=1.0)  # a chat takes seconds
    async with open_foreman(nursery, standin) as fm:
        answers: list[Answer] = []

        async def odd() -> None:
            answers.append(await call(fm.app, method, raw_path, body=CHAT))

        async with trio.open_nursery() as inner:
            inner.start_soon(partial(fm.client.post, "/api/chat", json=chat_body()))
            await trio.sleep(0.5)
            requests_before = sum(standin.requests.values())
            inner.start_soon(odd)
            await trio.sleep(2.0)
            assert fm.gw.gate.statistics().waiting == 1  # it waits its turn...
            assert sum(standin.requests.values()) == requests_before  # ...and nothing else
        assert answers[0].complete
        assert answers[0].status != 500
        assert standin.max_chats_in_flight == 1


@pytest.mark.parametrize(
    "body",
    [
        CHAT + b"x",  # Go's decoder reads the first value and ignores the rest
        CHAT + b'{"model":"other"}',
        CHAT[:-1] + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}",  # deeper than Python parses
        CHAT.replace(b'"model"', b'"MODEL"'),  # Go matches field names case-insensitively
        b"\xef\xbb\xbf" + CHAT,  # garbage before the object: Go fails, Python too
        b"",
        b"not json",
    ],
)
async def test_any_body_passes_the_gate(
    fm: Foreman, autojump_clock: trio.abc.Clock, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="foreman.access")
    statuses: list[int] = []

    async def send() -> None:
        statuses.append((await fm.client.post("/api/chat", content=body)).status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(send)
    assert 500 not in statuses
    assert fm.standin.max_chats_in_flight <= 1
    lines = [r.getMessage() for r in caplog.records if r.name == "foreman.access"]
    assert len(lines) == 5 and all("gate_wait=-" not in line for line in lines), lines


async def test_non_ascii_header_bytes_pass_through_as_bytes(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    cafe = "café".encode()
    answer = await call(fm.app, "GET", b"/api/version", headers=[(b"user-agent", cafe)])
    assert answer.status == 200
    assert fm.standin.last_headers["user-agent"] == cafe.decode("latin-1")


async def test_a_body_over_the_limit_is_413_and_never_relayed(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, max_body=1000) as fm:
        await trio.testing.wait_all_tasks_blocked()  # the embedder's warm-up is done
        embeds = standin.embeds_total
        big = json.dumps(chat_body(text="a" * 2000)).encode()
        for path in ("/api/chat", "/api/embed"):
            response = await fm.client.post(path, content=big)
            assert response.status_code == 413
            assert "FOREMAN_MAX_BODY" in response.json()["error"]
        assert standin.chats_total == 0 and standin.embeds_total == embeds
        assert (await fm.client.post("/api/chat", json=chat_body())).status_code == 200


async def test_bodies_waiting_at_the_gate_are_bounded_in_bytes(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(token_rate=1.0)
    async with open_foreman(nursery, standin, max_waiting_bytes=5000) as fm:
        body = json.dumps(chat_body(text="a" * 1900)).encode()  # about 2 kB
        statuses: list[int] = []

        async def chat() -> None:
            statuses.append((await fm.client.post("/api/chat", content=body)).status_code)

        async with trio.open_nursery() as inner:
            inner.start_soon(chat)  # holds the gate: its body is no longer waiting
            await trio.sleep(0.5)
            inner.start_soon(chat)
            inner.start_soon(chat)
            await trio.sleep(0.5)
            assert fm.gw.gate.statistics().waiting_bytes == 2 * len(body)
            busy = await fm.client.post("/api/chat", content=body)
            assert busy.status_code == 503
            assert busy.json()["error"].startswith("server busy, please try again.")
        assert statuses == [200, 200, 200]


async def test_big_bodies_are_freed_at_once_without_the_cycle_collector(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    big = "x" * (4 << 20)
    # warm up (imports, caches), then measure with the cycle collector off
    await fm.client.post("/api/embed", json={"model": "nomic-embed-text", "input": "warm"})
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        for path, body in [
            ("/api/embed", {"model": "nomic-embed-text", "input": big}),
            ("/api/chat", chat_body(text=big, stream=False)),
        ] * 3:
            response = await fm.client.post(path, json=body)
            assert response.status_code == 200
            del response
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert peak > 4 << 20  # the bodies did pass through
    # At most one body is left (the test client's last request); a reference cycle
    # anywhere on the path would keep every one of them until the collector runs.
    assert current < 6 << 20, f"{current / 2**20:.1f} MiB still held after six 4 MiB bodies"


async def test_a_frozen_target_cannot_hold_the_gate_and_readiness_follows(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(
        nursery, standin, response_timeout=120.0, control_timeout=5.0, poll_interval=30.0
    ) as fm:
        standin.freeze()  # the process is stopped; its host still answers TCP
        start = trio.current_time()
        response = await fm.client.post("/api/chat", json=chat_body(stream=False))
        assert response.status_code == 504
        assert "timed out" in response.json()["error"]
        assert trio.current_time() - start == pytest.approx(120.0, abs=0.5)
        await trio.testing.wait_all_tasks_blocked()
        assert fm.gw.gate.statistics().in_flight == 0
        # the failed relay asked for a poll at once; it timed out after 5 s
        assert (await fm.client.get("/readyz")).status_code == 503
        standin.thaw()
        await fm.gw.inventory.refresh()
        assert (await fm.client.get("/readyz")).status_code == 200


async def test_tags_answer_from_the_last_inventory_when_the_target_freezes(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, control_timeout=5.0, poll_interval=30.0) as fm:
        fresh = await fm.client.get("/api/tags")
        standin.freeze()
        start = trio.current_time()
        response = await fm.client.get("/api/tags")
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.1)
        assert (response.status_code, response.content) == (200, fresh.content)
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        await trio.sleep(5.1)  # the poll the timeout kicked has failed too
        assert (await fm.client.get("/readyz")).status_code == 503
        start = trio.current_time()
        again = await fm.client.get("/api/tags")  # degraded: no wait at all
        assert trio.current_time() == start and again.content == fresh.content


async def test_other_calls_to_a_frozen_target_time_out(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, idle_timeout=20.0) as fm:
        standin.freeze()
        start = trio.current_time()
        show = await fm.client.post("/api/show", json={"model": "llama3.2"})
        assert show.status_code == 504
        embed = await fm.client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
        assert embed.status_code == 504
        assert trio.current_time() - start == pytest.approx(40.0, abs=0.5)


@pytest.mark.parametrize("path", ["/api/chat", "/api/pull", "/api/delete", "/api/tags"])
async def test_a_foreign_origin_gets_ollamas_empty_403(
    fm: Foreman, autojump_clock: trio.abc.Clock, path: str
) -> None:
    await trio.testing.wait_all_tasks_blocked()  # the embedder's warm-up is done
    before = sum(fm.standin.requests.values())
    method = "GET" if path == "/api/tags" else "POST"
    response = await fm.client.request(
        method, path, json=chat_body(), headers={"Origin": "http://evil.com"}
    )
    assert (response.status_code, response.content) == (403, b"")
    assert sum(fm.standin.requests.values()) == before


async def test_local_app_and_configured_origins_are_allowed(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, origins=("https://*.example.com",)) as fm:
        for origin in (
            "http://localhost:3000",
            "https://127.0.0.1",
            "http://0.0.0.0:8000",
            "app://obsidian.md",
            "chrome-extension://abcdef",
            "https://notes.example.com",
        ):
            response = await fm.client.get("/api/version", headers={"Origin": origin})
            assert response.status_code == 200, origin
            assert response.headers["access-control-allow-origin"] == origin
        for origin in ("https://example.org", "http://localhost.evil.com", "null"):
            response = await fm.client.get("/api/version", headers={"Origin": origin})
            assert response.status_code == 403, origin
        same = await fm.client.get("/api/version", headers={"Origin": "http://localhost:8080"})
        assert same.status_code == 200 and "access-control-allow-origin" not in same.headers


async def test_an_allowed_preflight_gets_204(fm: Foreman, autojump_clock: trio.abc.Clock) -> None:
    response = await fm.client.options(
        "/api/chat",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 204
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert fm.standin.requests["OPTIONS /api/chat"] == 0


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        (b"localhost:8080", True),
        (b"127.0.0.1:8080", True),
        (b"[::1]:8080", True),
        (b"192.168.1.20:8080", True),
        (b"gpu-box.local", True),
        (b"evil.com", False),
        (b"evil.com:8080", False),
        (b"8.8.8.8", False),
    ],
)
async def test_a_foreign_host_is_refused_when_listening_on_loopback(
    fm: Foreman, autojump_clock: trio.abc.Clock, host: bytes, allowed: bool
) -> None:
    answer = await call(fm.app, "GET", b"/api/version", headers=[(b"host", host)])
    assert answer.status == (200 if allowed else 403)
    if not allowed:
        assert answer.body == b""


async def test_no_host_check_when_listening_on_the_network(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, listen="0.0.0.0:8080") as fm:
        response = await fm.client.get("/api/version", headers={"Host": "gpu-box.example.com"})
        assert response.status_code == 200


async def test_every_request_is_logged_once_even_when_it_gives_up_waiting(
    fm: Foreman, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="foreman.access")

    async def impatient() -> None:
        with trio.move_on_after(0.3):
            await fm.client.post("/api/chat", json=chat_body())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(fm.client.post, "/api/chat", json=chat_body()))
        await trio.sleep(0.1)
        for _ in range(9):
            nursery.start_soon(impatient)
    await trio.testing.wait_all_tasks_blocked()
    lines = [r.getMessage() for r in caplog.records if r.name == "foreman.access"]
    assert len(lines) == 10
    assert sum("outcome=cancelled" in line for line in lines) == 9
    assert sum("status=200" in line and "outcome=done" in line for line in lines) == 1
