"""The gate and the streaming path: one chat at a time, lines as they come, nothing left locked."""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any

import httpx2 as httpx
import pytest
import trio
import trio.testing

from foreman.dataplane.native import WATCH_AFTER, Disconnects
from foreman.standins.ollama import Faults, StandIn

from .conftest import Foreman, chat_body, open_foreman


async def read_lines(response: httpx.Response) -> list[tuple[float, dict]]:
    """(mock time of arrival, parsed line) for each NDJSON line, as the client sees them."""
    lines = []
    async for raw in response.aiter_raw():
        for line in raw.splitlines():
            lines.append((trio.current_time(), json.loads(line)))
    return lines


async def test_ndjson_lines_arrive_one_by_one_as_the_target_sends_them(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(token_rate=1.0)  # one line a second
    async with open_foreman(nursery, standin) as fm:
        start = trio.current_time()
        async with fm.client.stream("POST", "/api/chat", json=chat_body()) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/x-ndjson"
            chunks = []
            async for raw in response.aiter_raw():
                chunks.append((trio.current_time() - start, raw))
    # one chunk per line, each ending in a newline, none merged or split
    assert all(raw.endswith(b"\n") and raw.count(b"\n") == 1 for _, raw in chunks)
    times = [t for t, _ in chunks]
    # the first line is at the client a whole second before the target sends the second
    assert times[1] - times[0] >= 1.0
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:], strict=False))
    lines = [json.loads(raw) for _, raw in chunks]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert lines[-1]["done_reason"] == "stop" and "eval_count" in lines[-1]


async def test_stream_bytes_are_the_targets_bytes(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    body = {"model": "llama3.2", "prompt": "a <tag> & more"}  # Go escapes <, > and &
    direct = await fm.target.post("/api/generate", json=body)
    via = await fm.client.post("/api/generate", json=body)
    # Only the clock differs between two runs: mask timestamps and durations, compare bytes.
    mask = re.compile(rb'("created_at":"[^"]*"|"[a-z_]*duration":\d+)')
    assert mask.sub(b"T", via.content) == mask.sub(b"T", direct.content)
    assert b"\\u003c" in via.content


async def test_a_stream_whose_first_line_never_comes_times_out_and_frees_the_gate(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(load_delay=1000.0)  # a model load that takes forever
    async with open_foreman(nursery, standin, idle_timeout=5.0) as fm:
        start = trio.current_time()
        response = await fm.client.post("/api/chat", json=chat_body())
        assert response.status_code == 504
        assert "timed out" in response.json()["error"]
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert fm.gw.gate.statistics().in_flight == 0


async def test_a_non_streaming_answer_may_take_as_long_as_it_takes(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(load_delay=100.0)  # Ollama sends nothing until it is done
    async with open_foreman(nursery, standin, idle_timeout=5.0) as fm:
        response = await fm.client.post("/api/chat", json=chat_body(stream=False))
        assert response.status_code == 200
        assert response.json()["done"] is True


async def test_ten_concurrent_chats_never_overlap_at_the_target(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    finished: list[list[dict]] = []

    async def one_chat(i: int) -> None:
        async with fm.client.stream("POST", "/api/chat", json=chat_body(text=f"q{i}")) as response:
            assert response.status_code == 200
            finished.append([line for _, line in await read_lines(response)])

    async def one_generate() -> None:
        response = await fm.client.post(
            "/api/generate", json={"model": "llama3.2", "prompt": "p", "stream": False}
        )
        assert response.status_code == 200

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(one_chat, i)
        nursery.start_soon(one_generate)
        await trio.sleep(0.5)
        assert fm.gw.gate.statistics().in_flight == 1
        assert fm.gw.gate.statistics().waiting == 10
    assert len(finished) == 10
    assert all(lines[-1]["done"] for lines in finished)
    assert fm.standin.chats_total == 11
    assert fm.standin.max_chats_in_flight == 1


async def test_embeds_bypass_the_gate_and_overlap_at_the_target(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    async def embed(i: int) -> None:
        response = await fm.client.post(
            "/api/embed", json={"model": "nomic-embed-text", "input": [f"t{i}"]}
        )
        assert response.status_code == 200
        assert len(response.json()["embeddings"]) == 1

    async with trio.open_nursery() as nursery:
        # a long chat holds the gate the whole time
        nursery.start_soon(partial(fm.client.post, "/api/chat", json=chat_body()))
        await trio.sleep(0.2)
        assert fm.gw.gate.statistics().in_flight == 1
        before = fm.standin.embeds_total
        for i in range(10):
            nursery.start_soon(embed, i)
        await trio.testing.wait_all_tasks_blocked()
    assert fm.standin.embeds_total - before == 10
    assert fm.standin.max_embeds_in_flight > 1
    assert fm.standin.max_chats_in_flight == 1


async def test_the_gate_is_fair(fm: Foreman, autojump_clock: trio.abc.Clock) -> None:
    order: list[int] = []

    async def chat(i: int) -> None:
        response = await fm.client.post("/api/chat", json=chat_body(text=f"q{i}", stream=False))
        assert response.status_code == 200
        order.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(chat, i)
            await trio.sleep(0.01)  # arrive in order
    assert order == [0, 1, 2, 3, 4]


async def test_a_full_waiting_line_gets_ollamas_503(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, max_queue=2) as fm:
        statuses: list[int] = []

        async def chat() -> None:
            statuses.append((await fm.client.post("/api/chat", json=chat_body())).status_code)

        async with trio.open_nursery() as inner:
            for _ in range(3):  # one holds the gate, two wait
                inner.start_soon(chat)
            await trio.sleep(0.1)
            busy = await fm.client.post("/api/chat", json=chat_body())
            assert busy.status_code == 503
            assert busy.content == (
                b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
            )
        assert statuses == [200, 200, 200]


async def test_client_disconnect_mid_stream_frees_the_gate_at_once(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    async with fm.client.stream("POST", "/api/chat", json=chat_body()) as response:
        async for _ in response.aiter_raw():
            break  # one line, then hang up
        assert fm.gw.gate.statistics().in_flight == 1
    left = trio.current_time()
    await trio.testing.wait_all_tasks_blocked()
    assert fm.gw.gate.statistics().in_flight == 0
    assert fm.standin.chats_in_flight == 0  # the upstream request was aborted too
    assert trio.current_time() == left  # at once: no timeout was involved
    response = await fm.client.post("/api/chat", json=chat_body(stream=False))
    assert response.status_code == 200


async def test_only_requests_that_run_long_get_a_disconnect_watcher(
    fm: Foreman, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    watch = Disconnects._watch

    async def counted(w: Any) -> None:
        started.append(w.exchange.path)
        await watch(w)

    monkeypatch.setattr(Disconnects, "_watch", staticmethod(counted))
    for _ in range(5):  # the stand-in answers an embed in 10 ms
        embed = {"model": "nomic-embed-text", "input": "hi"}
        assert (await fm.client.post("/api/embed", json=embed)).status_code == 200
    await trio.sleep(1)
    assert started == []
    assert (await fm.client.post("/api/chat", json=chat_body())).status_code == 200
    assert started == ["/api/chat"]  # a stream of several lines a second: watched


async def test_a_client_leaving_before_its_watcher_starts_is_still_noticed(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, StandIn(token_rate=1.0)) as fm:  # a line a second
        async with fm.client.stream("POST", "/api/chat", json=chat_body()) as response:
            assert response.status_code == 200  # and gone at once, before WATCH_AFTER
            left = trio.current_time()
        with trio.fail_after(1):
            await fm.gw.in_flight.wait_value(0)
        assert trio.current_time() - left <= 2 * WATCH_AFTER
        await trio.testing.wait_all_tasks_blocked()
        assert fm.gw.gate.statistics().in_flight == 0
        assert fm.standin.chats_in_flight == 0  # aborted upstream too


async def test_client_leaving_the_waiting_line_does_not_hold_it(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(fm.client.post, "/api/chat", json=chat_body()))
        await trio.sleep(0.1)
        with trio.move_on_after(0.1):  # gives up while waiting at the gate
            await fm.client.post("/api/chat", json=chat_body())
        await trio.testing.wait_all_tasks_blocked()
        assert fm.gw.gate.statistics().waiting == 0
    assert fm.standin.chats_total == 1


async def test_target_dying_mid_stream_ends_with_an_error_line(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    fm.standin.faults = Faults(die_after=2)
    response = await fm.client.post("/api/chat", json=chat_body())
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.content.splitlines()]
    assert len(lines) == 3
    assert all(not line.get("done") for line in lines[:2])
    assert "broke the connection" in lines[-1]["error"]
    assert fm.gw.gate.statistics().in_flight == 0
    fm.standin.faults = Faults()
    assert (await fm.client.post("/api/chat", json=chat_body(stream=False))).status_code == 200


async def test_target_stalling_mid_stream_times_out_with_an_error_line(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, idle_timeout=5.0) as fm:
        fm.standin.faults = Faults(stall_after=1)
        start = trio.current_time()
        response = await fm.client.post("/api/chat", json=chat_body())
        lines = [json.loads(line) for line in response.content.splitlines()]
        assert len(lines) == 2
        assert "timed out" in lines[-1]["error"]
        assert 5.0 <= trio.current_time() - start < 6.0
        await trio.testing.wait_all_tasks_blocked()
        assert fm.gw.gate.statistics().in_flight == 0
        assert fm.standin.chats_in_flight == 0


async def test_runner_error_line_passes_through(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    fm.standin.faults = Faults(runner_error_after=1)
    response = await fm.client.post("/api/chat", json=chat_body())
    lines = [json.loads(line) for line in response.content.splitlines()]
    assert lines[-1]["error"].startswith("model runner has unexpectedly stopped")
    assert not any(line.get("done") for line in lines)


async def test_target_unreachable_is_503_with_retry_after(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    fm.standin.go_down()
    response = await fm.client.post("/api/chat", json=chat_body())
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert "http://127.0.0.1:11434 is unreachable" in response.json()["error"]
    embed = await fm.client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
    assert embed.status_code == 503
    assert fm.gw.gate.statistics().in_flight == 0


async def test_a_body_python_finds_odd_still_passes_the_gate(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    # Invalid UTF-8 inside a string: Go's decoder accepts it, so Ollama runs the chat.
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"caf\xe9"}]}'
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(partial(fm.client.post, "/api/chat", content=body))
    assert fm.standin.chats_total == 3
    assert fm.standin.max_chats_in_flight == 1


async def test_each_read_goes_out_in_one_write_and_a_partial_line_waits(
    autojump_clock: trio.abc.Clock,
) -> None:
    from foreman.backends.ollama.target import Target
    from foreman.dataplane.exchange import Exchange
    from foreman.dataplane.relay import relay
    from foreman.settings import Settings

    reads = [b'{"n":1}\n{"n":2}\n{"n', b'":3}\n', b'{"n":4,"done":true}\n']

    class Body(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            for chunk in reads:
                yield chunk
                await trio.sleep(1)  # the next read comes once the last one is written

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/x-ndjson"}, stream=Body())

    target = Target(httpx.MockTransport(answer), Settings())
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    exchange = Exchange("POST", "/api/chat", 0.0, count_tokens=True)
    request = target.request("POST", b"/api/chat", content=b"{}")
    await relay(target, request, send, exchange, header_timeout=None)
    bodies = [m["body"] for m in sent[1:]]
    assert bodies == [b'{"n":1}\n{"n":2}\n', b'{"n":3}\n', b'{"n":4,"done":true}\n', b""]
    assert exchange.final_line == b'{"n":4,"done":true}\n'
