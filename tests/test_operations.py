"""What operators rely on: /metrics, request ids, JSON logs, TLS."""

from __future__ import annotations

import io
import json
import ssl
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx2 as httpx
import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from foreman import run
from foreman.standins.ollama import StandIn

from .conftest import Foreman, captured_logs, chat_body, open_foreman, settings


async def scrape(fm: Foreman, **headers: str) -> dict[tuple[str, tuple], float]:
    """The samples of ``GET /metrics`` as {(name, sorted labels): value}."""
    response = await fm.client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_metrics_count_requests_tokens_and_the_gateways_state(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    stream = await fm.client.post("/api/chat", json=chat_body())
    final = json.loads(stream.content.splitlines()[-1])
    whole = (await fm.client.post("/api/chat", json=chat_body(stream=False))).json()
    await fm.client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
    await fm.client.get("/nowhere")
    samples = await scrape(fm)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("foreman_requests_total", route="chat", method="POST", status="200") == 2
    assert value("foreman_requests_total", route="embed", method="POST", status="200") == 1
    assert value("foreman_requests_total", route="other", method="GET", status="404") == 1
    assert value("foreman_request_duration_seconds_count", route="chat") == 2
    assert value("foreman_time_to_first_byte_seconds_count", route="chat") == 2
    assert value("foreman_gate_wait_seconds_count") == 2
    tokens_out = final["eval_count"] + whole["eval_count"]
    assert value("foreman_tokens_total", model="llama3.2", direction="out") == tokens_out
    tokens_in = final["prompt_eval_count"] + whole["prompt_eval_count"]
    assert value("foreman_tokens_total", model="llama3.2", direction="in") == tokens_in
    assert value("foreman_chats_in_flight") == 0 and value("foreman_chats_waiting") == 0
    assert value("foreman_target_reachable") == 1
    assert value("foreman_last_successful_poll_timestamp_seconds") > 1e9
    assert value("foreman_models") == 3
    assert value("foreman_warmups_total") >= 1


async def test_metrics_follow_the_target_going_down(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    fm.standin.go_down()
    await fm.gw.inventory.refresh()
    samples = await scrape(fm)
    assert samples[("foreman_target_reachable", ())] == 0


async def test_metrics_are_protected_like_the_api_unless_public(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, token="s3cret") as fm:
        assert (await fm.client.get("/metrics")).status_code == 401
        await scrape(fm, Authorization="Bearer s3cret")
    async with open_foreman(nursery, standin, token="s3cret", metrics_public=True) as fm:
        await scrape(fm)
        assert (await fm.client.get("/api/tags")).status_code == 401


async def test_every_answer_carries_a_request_id(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    one = await fm.client.get("/api/tags")
    two = await fm.client.get("/healthz")
    assert one.headers["x-request-id"] != two.headers["x-request-id"]
    kept = await fm.client.get("/api/version", headers={"X-Request-Id": "caller-42"})
    assert kept.headers["x-request-id"] == "caller-42"
    odd = await fm.client.get("/api/version", headers={"X-Request-Id": "a b"})
    assert odd.headers["x-request-id"] not in ("a b", "")
    refused = await fm.client.get("/api/version", headers={"Origin": "http://evil.com"})
    assert refused.status_code == 403 and refused.headers["x-request-id"]


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """foreman's json logging, into a string for the test."""
    with captured_logs("json") as stream:
        yield stream


async def test_json_logs_parse_line_by_line_and_never_hold_a_token(
    nursery: trio.Nursery,
    standin: StandIn,
    autojump_clock: trio.abc.Clock,
    json_logs: io.StringIO,
) -> None:
    async with open_foreman(nursery, standin, token="s3cret-token") as fm:
        auth = {"Authorization": "Bearer s3cret-token", "X-Request-Id": "r-1"}
        await fm.client.post("/api/chat", json=chat_body(), headers=auth)
        await fm.client.get("/api/tags", headers={"Authorization": "Bearer wrong-token"})
    err = json_logs.getvalue()
    records = [json.loads(line) for line in err.splitlines()]
    access = [r for r in records if r["logger"] == "foreman.access"]
    assert len(access) == 2
    chat = access[0]
    assert chat["request_id"] == "r-1" and chat["client"] == "127.0.0.1"
    assert (chat["method"], chat["path"], chat["model"], chat["status"]) == (
        "POST",
        "/api/chat",
        "llama3.2",
        200,
    )
    assert chat["outcome"] == "done" and chat["duration"] >= 0 and chat["gate_wait"] >= 0
    assert access[1]["status"] == 401
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert "s3cret-token" not in err and "wrong-token" not in err and "Bearer" not in err


async def test_tls_serves_https(tmp_path: Path) -> None:
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    shutdown = trio.Event()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            config = settings(
                ollama_url="http://127.0.0.1:9",  # nothing there: foreman starts degraded
                listen="127.0.0.1:0",
                tls_cert=str(cert_path),
                tls_key=str(key_path),
                embed_model=None,
            )
            urls = await nursery.start(partial(run, config, shutdown_trigger=shutdown.wait))
            assert urls[0].startswith("https://")
            async with httpx.AsyncClient(verify=client_context) as client:
                response = await client.get(f"{urls[0]}/healthz")
                assert response.status_code == 200
                assert response.json()["status"] == "degraded"
            shutdown.set()
