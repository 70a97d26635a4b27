"""The HTTP surface: native Ollama byte for byte, foreman's own errors in Ollama's shape."""

from __future__ import annotations

import json

import pytest
import trio

from foreman.standins.ollama import StandIn

from .conftest import Foreman, chat_body, open_foreman


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/", None),
        ("HEAD", "/", None),
        ("GET", "/api/tags/", None),  # gin's redirect, Location and all
        ("POST", "/api/copy", {"source": "llama3.2", "destination": "x"}),  # 200, empty body
        ("GET", "/api/version", None),
        ("GET", "/api/tags", None),
        ("GET", "/api/ps", None),
        ("POST", "/api/show", {"model": "llama3.2"}),
        ("POST", "/api/show", {"model": "nope"}),  # the target's 404, untouched
        ("GET", "/api/chat", None),  # the target's 405
        ("GET", "/api/nonexistent", None),  # the target's 404 page
    ],
)
async def test_passthrough_is_byte_for_byte(
    fm: Foreman, method: str, path: str, body: dict | None, autojump_clock: trio.abc.Clock
) -> None:
    await fm.client.post(
        "/api/embed", json={"model": "nomic-embed-text", "input": "x"}
    )  # /api/ps not empty
    direct = await fm.target.request(method, path, json=body)
    via = await fm.client.request(method, path, json=body)
    assert via.status_code == direct.status_code
    assert via.content == direct.content
    for name in ("content-type", "location", "content-length"):
        assert via.headers.get(name) == direct.headers.get(name), name


async def test_unknown_route_outside_api_is_gins_404(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    response = await fm.client.get("/v2/whatever")
    assert response.status_code == 404
    assert response.text == "404 page not found"


async def test_target_errors_before_the_stream_pass_through(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    # think on a non-thinking model: Ollama answers 400 before any line.
    body = chat_body("llama3.2", think=True)
    direct = await fm.target.post("/api/chat", json=body)
    via = await fm.client.post("/api/chat", json=body)
    assert (via.status_code, via.content) == (direct.status_code, direct.content)
    assert via.status_code == 400


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/chat", b"", 400, "missing request body"),
        ("/api/chat", b'{"messages": []}', 400, "model is required"),
        ("/api/generate", b'{"prompt": "hi"}', 404, "model '' not found"),
        ("/api/chat", b'{"model": "a:b:c"}', 400, "invalid model name"),
    ],
)
async def test_unroutable_requests_get_the_targets_own_error(
    fm: Foreman, path: str, body: bytes, status: int, error: str, autojump_clock: trio.abc.Clock
) -> None:
    response = await fm.client.post(path, content=body)
    assert response.status_code == status
    assert response.json() == {"error": error}


async def test_unknown_model_is_ollamas_404_after_exactly_one_repoll(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    polls = fm.standin.requests["GET /api/tags"]
    response = await fm.client.post("/api/chat", json=chat_body("no-such-model"))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.content == b'{"error":"model \'no-such-model\' not found"}'
    assert fm.standin.requests["GET /api/tags"] == polls + 1
    assert fm.standin.chats_total == 0


async def test_concurrent_misses_share_one_repoll(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    polls = fm.standin.requests["GET /api/tags"]
    statuses = []

    async def ask(i: int) -> None:
        response = await fm.client.post("/api/generate", json={"model": f"ghost{i}", "prompt": "x"})
        statuses.append(response.status_code)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(ask, i)
    assert statuses == [404] * 8
    assert fm.standin.requests["GET /api/tags"] == polls + 1


async def test_model_names_resolve_as_ollama_does(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    for name in (
        "llama3.2",
        "llama3.2:latest",
        "Llama3.2:LATEST",
        "library/llama3.2",
        "registry.ollama.ai/library/llama3.2:latest",
    ):
        response = await fm.client.post("/api/chat", json=chat_body(name, stream=False))
        assert response.status_code == 200, name
        assert response.json()["model"] == name  # the request string, verbatim


async def test_client_host_and_origin_never_reach_the_target(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    # The stand-in answers 403 to a foreign Host or Origin, as loopback Ollama does;
    # foreman, listening on the network and allowing this origin, checks them itself.
    async with open_foreman(
        nursery, standin, listen="0.0.0.0:8080", origins=("https://app.example.com",)
    ) as fm:
        headers = {"Host": "foreman.example.com", "Origin": "https://app.example.com"}
        response = await fm.client.post("/api/chat", json=chat_body(stream=False), headers=headers)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        assert fm.standin.last_headers.get("host", "127.0.0.1:11434") != "foreman.example.com"
        assert "origin" not in fm.standin.last_headers


async def test_non_streaming_chat_is_one_json_object(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    response = await fm.client.post("/api/chat", json=chat_body(stream=False))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    answer = response.json()
    assert answer["done"] is True and answer["message"]["role"] == "assistant"
    assert answer["message"]["content"]


async def test_embeddings_legacy_endpoint(fm: Foreman, autojump_clock: trio.abc.Clock) -> None:
    response = await fm.client.post(
        "/api/embeddings", json={"model": "nomic-embed-text", "prompt": "hi"}
    )
    assert response.status_code == 200
    assert isinstance(response.json()["embedding"], list)


async def test_inbound_bearer_is_required_when_configured(
    nursery: trio.Nursery, standin, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, token="s3cret") as fm:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = await fm.client.get("/api/tags", headers=headers)
            assert response.status_code == 401
            assert response.content == b'{"error":"unauthorized"}'
            assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert (await fm.client.get("/healthz")).status_code == 200
        assert (await fm.client.get("/readyz")).status_code == 200
        ok = await fm.client.get("/api/tags", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        # foreman's token is foreman's: it never reaches the target
        assert "authorization" not in fm.standin.last_headers


async def test_outbound_bearer_reaches_the_target(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    from foreman.standins.ollama import StandIn

    standin = StandIn(token="upstream-key")
    async with open_foreman(nursery, standin, ollama_token="upstream-key", token="inbound") as fm:
        assert not fm.gw.inventory.degraded.value  # the poller authenticated
        response = await fm.client.post(
            "/api/chat", json=chat_body(stream=False), headers={"Authorization": "Bearer inbound"}
        )
        assert response.status_code == 200
        assert fm.standin.last_headers["authorization"] == "Bearer upstream-key"


async def test_healthz_reports_the_gateway(fm: Foreman, autojump_clock: trio.abc.Clock) -> None:
    await trio.sleep(11)  # one ps poll after the warm-up
    report = (await fm.client.get("/healthz")).json()
    assert report["status"] == "ok"
    assert report["target"] == "http://127.0.0.1:11434"
    assert report["models"] == len(json.loads(fm.gw.inventory.body)["models"])
    assert report["last_poll"].endswith("Z")
    assert report["chats"] == {
        "in_flight": 0,
        "waiting": 0,
        "max_waiting": 512,
        "waiting_bytes": 0,
    }
    assert report["embedder"]["model"] == "nomic-embed-text"
    assert report["embedder"]["resident"] is True
    assert "nomic-embed-text:latest" in report["resident"]
