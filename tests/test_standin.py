"""The stand-in Ollama target on its own: wire shapes, errors, residency, faults, serving."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx2 as httpx
import pytest
import trio
import trio.testing

from foreman.standins.ollama import DEFAULT_MODELS, Faults, ModelSpec, StandIn, serve

BASE = "http://127.0.0.1:11434"
JSON_TYPE = "application/json; charset=utf-8"


@asynccontextmanager
async def open_client(nursery: trio.Nursery, standin: StandIn) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=standin.transport(nursery), base_url=BASE) as client:
        yield client


@pytest.fixture
def standin() -> StandIn:
    return StandIn()


@pytest.fixture
async def client(nursery: trio.Nursery, standin: StandIn) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(nursery, standin) as client:
        yield client


def chat(model: str = "llama3.2", text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def timed_lines(response: httpx.Response, start: float) -> list[tuple[float, bytes]]:
    return [(trio.current_time() - start, raw) async for raw in response.aiter_raw()]


# --- simple endpoints ---------------------------------------------------------------------


async def test_root_version_and_head(client: httpx.AsyncClient) -> None:
    root = await client.get("/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["content-type"] == "text/plain; charset=utf-8"
    head = await client.head("/")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "17")
    version = await client.get("/api/version")
    assert version.content == b'{"version":"0.33.0"}'
    assert version.headers["content-type"] == JSON_TYPE
    status = await client.get("/api/status")
    assert status.content == b'{"cloud":{"disabled":false,"source":"none"}}'


async def test_tags_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tags")
    assert response.headers["content-type"] == JSON_TYPE
    assert not response.content.endswith(b"\n") and b", " not in response.content
    models = response.json()["models"]
    assert [m["name"] for m in models] == ["qwen3:8b", "nomic-embed-text:latest", "llama3.2:latest"]
    entry = models[0]
    assert list(entry) == [
        "name",
        "model",
        "modified_at",
        "size",
        "digest",
        "details",
        "capabilities",
    ]
    assert entry["model"] == entry["name"]
    assert len(entry["digest"]) == 64 and entry["modified_at"].endswith("Z")
    assert list(entry["details"]) == [
        "parent_model",
        "format",
        "family",
        "families",
        "parameter_size",
        "quantization_level",
        "context_length",
        "embedding_length",
    ]
    assert entry["capabilities"] == ["completion", "tools", "thinking"]
    assert models[1]["capabilities"] == ["embedding"]
    assert models[1]["details"]["embedding_length"] == 768


async def test_show_shape_and_unknown_model(client: httpx.AsyncClient) -> None:
    shown = (await client.post("/api/show", json={"model": "llama3.2"})).json()
    assert "model_info" in shown and shown["model_info"]["general.architecture"] == "llama"
    assert shown["details"]["family"] == "llama" and "context_length" not in shown["details"]
    assert shown["capabilities"] == ["completion", "tools"]
    assert list(shown)[-2:] == ["capabilities", "modified_at"]
    legacy = await client.post("/api/show", json={"name": "nomic-embed-text"})
    assert legacy.json()["capabilities"] == ["embedding"]
    unknown = await client.post("/api/show", json={"model": "library/Foo"})
    assert unknown.status_code == 404
    assert unknown.content == b'{"error":"model \'Foo:latest\' not found"}'
    missing = await client.post("/api/show", json={})
    assert (missing.status_code, missing.json()) == (400, {"error": "model is required"})


async def test_routing_errors_are_gins(client: httpx.AsyncClient) -> None:
    for method, path, status, text in [
        ("GET", "/api/nonexistent", 404, "404 page not found"),
        ("GET", "/api/chat", 405, "405 method not allowed"),
        ("POST", "/api/tags", 405, "405 method not allowed"),
    ]:
        response = await client.request(method, path)
        assert (response.status_code, response.text) == (status, text)
        assert response.headers["content-type"] == "text/plain"
    head_ps = await client.head("/api/ps")
    assert (head_ps.status_code, head_ps.content) == (405, b"")
    assert (await client.head("/api/tags")).status_code == 200
    redirect = await client.get("/api/tags/")
    assert (redirect.status_code, redirect.headers["location"]) == (301, "/api/tags")


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "llama3.2",
        "llama3.2:latest",
        "Llama3.2:LATEST",
        "library/llama3.2",
        "registry.ollama.ai/library/llama3.2:latest",
    ],
)
async def test_names_resolve_as_ollama_does(
    client: httpx.AsyncClient, name: str, autojump_clock: trio.abc.Clock
) -> None:
    response = await client.post("/api/chat", json=chat(name, stream=False))
    assert response.status_code == 200
    assert response.json()["model"] == name  # echoed verbatim


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("llama3.2:3b", 404, "model 'llama3.2:3b' not found"),
        ("llama3", 404, "model 'llama3' not found"),
        ("a:b:c", 400, "invalid model name"),
        ("foo bar", 400, "invalid model name"),
    ],
)
async def test_names_that_do_not_resolve(
    client: httpx.AsyncClient, name: str, status: int, message: str
) -> None:
    response = await client.post("/api/chat", json=chat(name))
    assert (response.status_code, response.json()) == (status, {"error": message})


# --- chat and generate --------------------------------------------------------------------


async def test_chat_streams_line_by_line_at_the_token_rate(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(token_rate=2.0)  # a line every 0.5 s
    async with open_client(nursery, standin) as client:
        start = trio.current_time()
        async with client.stream("POST", "/api/chat", json=chat()) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/x-ndjson"
            assert "content-length" not in response.headers
            chunks = await timed_lines(response, start)
    assert [t for t, _ in chunks] == [0.5 * i for i in range(1, 8)]  # 6 tokens + done
    assert all(raw.endswith(b"\n") and raw.count(b"\n") == 1 for _, raw in chunks)
    lines = [json.loads(raw) for _, raw in chunks]
    assert list(lines[0]) == ["model", "created_at", "message", "done"]
    assert lines[0]["message"] == {"role": "assistant", "content": "hello"}
    assert "".join(line["message"]["content"] for line in lines) == (
        "hello there hello there hello there"
    )
    final = lines[-1]
    assert list(final) == [
        "model",
        "created_at",
        "message",
        "done",
        "done_reason",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["eval_count"] == 6 and final["total_duration"] == 3_500_000_000
    assert all(line["created_at"].endswith("Z") for line in lines)
    assert standin.chats_in_flight == 0 and standin.chats_total == 1


async def test_stream_false_is_one_object(
    client: httpx.AsyncClient, autojump_clock: trio.abc.Clock
) -> None:
    response = await client.post("/api/chat", json=chat(text="a <b>", stream=False))
    assert response.headers["content-type"] == JSON_TYPE
    assert b"\\u003cb\\u003e" in response.content  # Go escapes <, > and &
    answer = response.json()
    assert answer["message"] == {"role": "assistant", "content": "a <b> a <b> a <b>"}
    assert answer["done"] is True and answer["done_reason"] == "stop"

    generated = await client.post(
        "/api/generate", json={"model": "llama3.2", "prompt": "why sky", "stream": False}
    )
    body = generated.json()
    assert list(body)[:6] == ["model", "created_at", "response", "done", "done_reason", "context"]
    assert body["response"] == "why sky why sky why sky"
    assert all(isinstance(i, int) for i in body["context"])


async def test_generate_streams_responses(
    client: httpx.AsyncClient, autojump_clock: trio.abc.Clock
) -> None:
    response = await client.post("/api/generate", json={"model": "llama3.2", "prompt": "hi"})
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert list(lines[0]) == ["model", "created_at", "response", "done"]
    assert [line["response"] for line in lines[:-1]] == ["hi", " hi", " hi", " hi", " hi", " hi"]
    assert lines[-1]["done"] and "context" in lines[-1]


async def test_thinking_models_think_first(
    client: httpx.AsyncClient, autojump_clock: trio.abc.Clock
) -> None:
    response = await client.post("/api/chat", json=chat("qwen3:8b", text="hi"))
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[0]["message"] == {"role": "assistant", "content": "", "thinking": "Thinking"}
    assert lines[2]["message"] == {"role": "assistant", "content": "hi"}
    assert lines[-1]["eval_count"] == 8
    no_think = await client.post(
        "/api/chat", json=chat("qwen3:8b", text="hi", think=False, stream=False)
    )
    assert "thinking" not in no_think.json()["message"]
    thought = await client.post(
        "/api/generate", json={"model": "qwen3:8b", "prompt": "x", "stream": False}
    )
    assert list(thought.json())[2:4] == ["response", "thinking"]
    assert thought.json()["thinking"] == "Thinking it over."


async def test_num_predict_cuts_the_reply(
    client: httpx.AsyncClient, autojump_clock: trio.abc.Clock
) -> None:
    response = await client.post("/api/chat", json=chat(stream=False, options={"num_predict": 2}))
    answer = response.json()
    assert answer["message"]["content"] == "hello there"
    assert (answer["done_reason"], answer["eval_count"]) == ("length", 2)
    bad = await client.post("/api/chat", json=chat(options={"num_predict": "x"}))
    assert (bad.status_code, bad.json()["error"]) == (
        500,
        'option "num_predict" must be of type integer',
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/chat", b"", 400, "missing request body"),
        ("/api/chat", b"  \n", 400, "missing request body"),
        ("/api/chat", b"xyz", 400, "invalid character 'x' looking for beginning of value"),
        ("/api/chat", b'{"model": "llama3.2"', 400, "unexpected EOF"),
        (
            "/api/chat",
            b"[1]",
            400,
            "json: cannot unmarshal array into Go value of type api.ChatRequest",
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "stream": "yes"}',
            400,
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        ("/api/chat", b'{"messages": []}', 400, "model is required"),
        ("/api/generate", b'{"prompt": "hi"}', 404, "model '' not found"),
        ("/api/embed", b'{"input": "hi"}', 404, "model '' not found"),
        ("/api/embeddings", b'{"prompt": "hi"}', 400, "model is required"),
        ("/api/generate", b'{"model": "nope", "prompt": "x"}', 404, "model 'nope' not found"),
        (
            "/api/embed",
            b'{"model": "nope", "input": "x"}',
            404,
            'model "nope" not found, try pulling it first',
        ),
        (
            "/api/embeddings",
            b'{"model": "nope", "prompt": "x"}',
            404,
            'model "nope" not found, try pulling it first',
        ),
        (
            "/api/chat",
            b'{"model": "nomic-embed-text", "messages": [{"role": "user", "content": "x"}]}',
            400,
            '"nomic-embed-text" does not support chat',
        ),
        (
            "/api/generate",
            b'{"model": "nomic-embed-text", "prompt": "x"}',
            400,
            '"nomic-embed-text" does not support generate',
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "think": true, "messages": []}',
            400,
            '"llama3.2" does not support thinking',
        ),
        (
            "/api/chat",
            b'{"model": "qwen3:8b", "think": "lots"}',
            400,
            'invalid think value: "lots" (must be "high", "medium", "low", "max", true, or false)',
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "keep_alive": "300"}',
            400,
            'time: missing unit in duration "300"',
        ),
        (
            "/api/embed",
            b'{"model": "nomic-embed-text", "keep_alive": true}',
            400,
            "Unsupported type: 'bool'",
        ),
        ("/api/embed", b'{"model": "nomic-embed-text", "input": [1]}', 400, "invalid input type"),
        (
            "/api/chat",
            b'{"model": "llama3.2", "x": ' + b"[" * 10_001 + b"]" * 10_001 + b"}",
            400,
            "invalid character '[' exceeded max depth",
        ),
    ],
)
async def test_request_errors(
    client: httpx.AsyncClient, path: str, body: bytes, status: int, message: str
) -> None:
    response = await client.post(path, content=body)
    assert response.status_code == status
    assert response.headers["content-type"] == JSON_TYPE
    assert response.content == json.dumps({"error": message}, separators=(",", ":")).encode()


async def test_load_and_unload_calls_answer_one_object(
    client: httpx.AsyncClient, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    load = await client.post("/api/chat", json={"model": "llama3.2", "messages": []})
    assert load.headers["content-type"] == JSON_TYPE  # not a stream, though stream defaulted true
    assert list(load.json()) == ["model", "created_at", "message", "done", "done_reason"]
    assert load.json()["done_reason"] == "load"
    assert standin.resident() == ["llama3.2:latest"]
    unload = await client.post("/api/generate", json={"model": "llama3.2", "keep_alive": 0})
    assert (unload.json()["response"], unload.json()["done_reason"]) == ("", "unload")
    assert standin.resident() == []
    empty = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": []})
    assert empty.content == b'{"model":"nomic-embed-text","embeddings":[]}'
    legacy = await client.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": ""})
    assert legacy.content == b'{"embedding":[]}'
    assert standin.resident() == ["nomic-embed-text:latest"]


async def test_embeddings_are_deterministic_and_normalised(
    client: httpx.AsyncClient, autojump_clock: trio.abc.Clock
) -> None:
    body = {"model": "nomic-embed-text", "input": ["one", "two"]}
    first = (await client.post("/api/embed", json=body)).json()
    second = (await client.post("/api/embed", json=body)).json()
    assert first["embeddings"] == second["embeddings"]
    assert list(first) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    one, two = first["embeddings"]
    assert one != two and len(one) == 8
    assert abs(sum(x * x for x in one) - 1.0) < 1e-6
    single = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "one"})
    assert single.json()["embeddings"] == [one]
    short = await client.post("/api/embed", json={**body, "dimensions": 4})
    assert len(short.json()["embeddings"][0]) == 4
    on_chat_model = await client.post("/api/embed", json={"model": "llama3.2", "input": "x"})
    assert on_chat_model.status_code == 200  # Ollama lets any model embed
    legacy = await client.post(
        "/api/embeddings", json={"model": "nomic-embed-text", "prompt": "one"}
    )
    assert len(legacy.json()["embedding"]) == 8


# --- access -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Host": "example.com"}, False),
        ({"Host": "example.com:11434"}, False),
        ({"Host": "8.8.8.8"}, False),
        ({"Host": "localhost:11434"}, True),
        ({"Host": "gpu-box.local"}, True),
        ({"Host": "ollama.internal:80"}, True),
        ({"Host": "192.168.1.20:11434"}, True),
        ({"Host": "[::1]:11434"}, True),
        ({"Host": "0.0.0.0"}, True),
        ({"Origin": "https://evil.example.com"}, False),
        ({"Origin": "http://localhost:3000"}, True),
        ({"Origin": "chrome-extension://abc"}, True),
    ],
)
async def test_host_and_origin_checks(
    client: httpx.AsyncClient, headers: dict[str, str], allowed: bool
) -> None:
    response = await client.get("/api/version", headers=headers)
    if allowed:
        assert response.status_code == 200
    else:
        assert (response.status_code, response.content) == (403, b"")
    if allowed and "Origin" in headers:
        assert response.headers["access-control-allow-origin"] == headers["Origin"]


async def test_bearer_token_when_configured(nursery: trio.Nursery) -> None:
    standin = StandIn(token="s3cret")
    async with open_client(nursery, standin) as client:
        refused = await client.get("/api/tags", headers={"Authorization": "Bearer nope"})
        assert (refused.status_code, refused.content) == (401, b'{"error":"unauthorized"}')
        assert refused.headers["content-type"] == JSON_TYPE
        ok = await client.get("/api/tags", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert standin.last_headers["authorization"] == "Bearer s3cret"
        assert standin.requests["GET /api/tags"] == 2
        assert (await client.get("/_standin/stats")).status_code == 200  # control is exempt


# --- residency ----------------------------------------------------------------------------


async def ps(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    return (await client.get("/api/ps")).json()["models"]


async def test_two_slots_and_eviction_of_the_shortest_keep_alive(
    client: httpx.AsyncClient, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    await client.post("/api/chat", json=chat(stream=False))
    await client.post(
        "/api/embed", json={"model": "nomic-embed-text", "input": "x", "keep_alive": -1}
    )
    assert sorted(standin.resident()) == ["llama3.2:latest", "nomic-embed-text:latest"]
    models = await ps(client)
    assert [m["name"] for m in models] == ["nomic-embed-text:latest", "llama3.2:latest"]
    assert list(models[0]) == [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ]
    assert models[0]["expires_at"] > "2300"  # forever: about 292 years ahead
    assert models[1]["expires_at"] < "2100"
    assert "context_length" not in models[0]["details"]
    assert await ps(client) == models  # same bytes each time

    await client.post("/api/chat", json=chat("qwen3:8b", stream=False))  # a third model
    assert sorted(standin.resident()) == ["nomic-embed-text:latest", "qwen3:8b"]
    await client.post("/api/chat", json=chat(stream=False, keep_alive="1h"))
    assert sorted(standin.resident()) == ["llama3.2:latest", "nomic-embed-text:latest"]


async def test_a_load_waits_until_a_busy_runner_is_idle(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(max_loaded_models=1, token_rate=1.0)
    async with open_client(nursery, standin) as client:
        nursery.start_soon(partial(client.post, "/api/chat", json=chat()))  # 7 s of streaming
        await trio.sleep(1)
        start = trio.current_time()
        response = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
        assert response.status_code == 200
        assert trio.current_time() - start >= 6.0  # waited for the chat to finish
        assert standin.resident() == ["nomic-embed-text:latest"]


async def test_keep_alive_expiry_is_lazy_and_zero_unloads_when_idle(
    client: httpx.AsyncClient, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    await client.post("/api/chat", json=chat(stream=False, keep_alive="10s"))
    assert standin.resident() == ["llama3.2:latest"]
    await trio.sleep(9)
    assert standin.resident() == ["llama3.2:latest"]
    await trio.sleep(2)
    assert standin.resident() == []
    await client.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "keep_alive": 0})
    assert standin.resident() == []
    await client.post("/api/chat", json=chat(stream=False))
    await trio.sleep(299)
    assert standin.resident() == ["llama3.2:latest"]  # OLLAMA_KEEP_ALIVE 5m
    await trio.sleep(2)
    assert await ps(client) == []


async def test_load_delay_counts_once_and_shows_in_load_duration(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    standin = StandIn(load_delay=2.0)
    async with open_client(nursery, standin) as client:
        answers: list[dict[str, Any]] = []

        async def one() -> None:
            response = await client.post("/api/chat", json=chat(stream=False))
            answers.append(response.json())

        async with trio.open_nursery() as inner:
            inner.start_soon(one)
            inner.start_soon(one)
        assert all(a["load_duration"] == 2_000_000_000 for a in answers)
        again = (await client.post("/api/chat", json=chat(stream=False))).json()
        assert again["load_duration"] < 1_000_000


# --- statistics ---------------------------------------------------------------------------


async def test_overlapping_chats_are_counted_not_serialised_by_http(
    client: httpx.AsyncClient, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        for text in ("a", "b"):
            nursery.start_soon(partial(client.post, "/api/chat", json=chat(text=text)))
        await trio.sleep(0.1)
        assert standin.chats_in_flight == 2
    assert (standin.max_chats_in_flight, standin.chats_total, standin.chats_in_flight) == (2, 2, 0)
    assert standin.requests["POST /api/chat"] == 2
    assert standin.last_headers["host"] == "127.0.0.1:11434"


async def test_control_endpoints(client: httpx.AsyncClient, standin: StandIn) -> None:
    await client.get("/api/tags")
    stats = (await client.get("/_standin/stats")).json()
    assert stats["requests"] == {"GET /api/tags": 1}
    assert stats["faults"] == {"stall_after": None, "die_after": None, "runner_error_after": None}
    set_faults = await client.post("/_standin/faults", json={"die_after": 3})
    assert set_faults.json()["faults"]["die_after"] == 3
    assert standin.faults == Faults(die_after=3)
    bad = await client.post("/_standin/faults", json={"explode": 1})
    assert bad.status_code == 400
    reset = (await client.post("/_standin/reset")).json()
    assert reset["requests"] == {} and reset["chats_total"] == 0
    assert reset["faults"]["die_after"] == 3  # reset clears counters only


async def test_models_can_be_added_and_removed(client: httpx.AsyncClient, standin: StandIn) -> None:
    standin.add_model(ModelSpec.completion("newcomer:7b"))
    names = [m["name"] for m in (await client.get("/api/tags")).json()["models"]]
    assert "newcomer:7b" in names and len(names) == len(DEFAULT_MODELS) + 1
    standin.remove_model("newcomer:7b")
    assert standin.find("newcomer:7b") is None


# --- faults and disconnects ---------------------------------------------------------------


async def test_stall_fault_hangs_the_read(
    client: httpx.AsyncClient, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    standin.faults = Faults(stall_after=1)
    async with client.stream("POST", "/api/chat", json=chat()) as response:
        lines = response.aiter_raw()
        assert json.loads(await anext(lines))["done"] is False
        with trio.move_on_after(60) as scope:
            await anext(lines)
        assert scope.cancelled_caught
        assert standin.chats_in_flight == 1
    await trio.testing.wait_all_tasks_blocked()
    assert standin.chats_in_flight == 0  # hanging up ended the stall


async def test_die_fault_breaks_the_stream(
    client: httpx.AsyncClient, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    standin.faults = Faults(die_after=2)
    received: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", "/api/chat", json=chat()) as response:
            async for raw in response.aiter_raw():
                received.append(raw)
    assert len(received) == 2
    await trio.testing.wait_all_tasks_blocked()
    assert standin.chats_in_flight == 0
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/api/chat", json=chat(stream=False))
    standin.faults = Faults()
    assert (await client.post("/api/chat", json=chat(stream=False))).status_code == 200


async def test_runner_error_fault_is_an_in_band_line(
    client: httpx.AsyncClient, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    standin.faults = Faults(runner_error_after=1)
    response = await client.post("/api/chat", json=chat())
    assert response.status_code == 200
    lines = response.text.splitlines(keepends=True)
    assert len(lines) == 2 and not any(json.loads(line).get("done") for line in lines)
    assert lines[-1] == (
        '{"error":"model runner has unexpectedly stopped, this may be due to resource '
        'limitations or an internal error, check ollama server logs for details"}\n'
    )
    whole = await client.post(
        "/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False}
    )
    assert whole.status_code == 500
    assert whole.json()["error"].startswith("model runner has unexpectedly stopped")


async def test_go_down_refuses_connections(client: httpx.AsyncClient, standin: StandIn) -> None:
    standin.go_down()
    with pytest.raises(httpx.ConnectError):
        await client.get("/api/tags")
    assert standin.requests["GET /api/tags"] == 0
    standin.come_back()
    assert (await client.get("/api/tags")).status_code == 200


async def hang_up_after_one_line(client: httpx.AsyncClient) -> None:
    """Read one line of a chat stream, then close it (cancelling the read, so the
    transport's body generator finishes instead of being garbage collected)."""
    async with client.stream("POST", "/api/chat", json=chat()) as response:
        with trio.CancelScope() as scope:
            async for _ in response.aiter_raw():
                scope.cancel()


async def test_disconnect_mid_stream_stops_generation_at_once(
    client: httpx.AsyncClient, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    await hang_up_after_one_line(client)
    left = trio.current_time()
    await trio.testing.wait_all_tasks_blocked()
    assert (standin.chats_in_flight, standin.chats_total) == (0, 1)
    assert trio.current_time() == left
    # the runner's slot and reference were freed: the next reply starts at once
    start = trio.current_time()
    await hang_up_after_one_line(client)
    assert trio.current_time() - start == pytest.approx(0.05)
    await trio.testing.wait_all_tasks_blocked()
    assert standin.scheduler.runners()[0].refcount == 0


# --- a real socket --------------------------------------------------------------------------


async def test_serve_on_a_real_socket() -> None:
    standin = StandIn(token_rate=200.0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(partial(serve, standin, "127.0.0.1:0"))
            assert urls[0].startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=urls[0]) as client:
                tags = await client.get("/api/tags")
                assert tags.status_code == 200
                assert tags.headers["content-type"] == JSON_TYPE
                assert "server" not in tags.headers
                assert len(tags.json()["models"]) == 3
                response = await client.post("/api/chat", json=chat())
                assert response.headers["transfer-encoding"] == "chunked"
                assert json.loads(response.text.splitlines()[-1])["done"] is True
            nursery.cancel_scope.cancel()


async def test_nesting_python_cannot_parse_but_go_can_is_accepted(
    client: httpx.AsyncClient, autojump_clock: trio.abc.Clock
) -> None:
    deep = b"[" * 9_998 + b"]" * 9_998  # with the two objects: Go's limit, 10,000
    body = json.dumps(chat(stream=False)).encode()[:-1] + b', "options": {"x": ' + deep + b"}}"
    response = await client.post("/api/chat", content=body)
    assert response.status_code == 200 and response.json()["done"] is True


async def test_a_frozen_stand_in_holds_requests_and_streams_until_thawed(
    client: httpx.AsyncClient, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    lines: list[tuple[float, bytes]] = []
    async with client.stream("POST", "/api/chat", json=chat()) as response:
        async for line in response.aiter_lines():
            lines.append((trio.current_time(), line))
            if len(lines) == 2:
                standin.freeze()
                assert (await client.get("/_standin/stats")).status_code == 200  # exempt
                with trio.move_on_after(60) as held:
                    await client.get("/api/version")
                assert held.cancelled_caught
                standin.thaw()
    assert json.loads(lines[-1][1])["done"] is True
    gaps = [b[0] - a[0] for a, b in zip(lines, lines[1:], strict=False)]
    assert max(gaps) >= 60  # the stream stopped while frozen, then went on
