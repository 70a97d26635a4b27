"""Ollama's OpenAI and Anthropic faces through foreman, in-process (``docs/adr/0016-faces.md``).

Byte fidelity against the stand-in's direct answers (ids and timestamps aside), the
gate across faces, foreman's own errors in each face's shape, the end of a broken
stream, keys, and the backends that speak a face natively.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

from foreman.standins.anthropic import AnthropicStandIn
from foreman.standins.ollama import StandIn
from foreman.standins.openai import OpenAIStandIn

from .conftest import Foreman, chat_body, open_foreman
from .test_api_backends import CLAUDE, OPENAI, add
from .test_backends import wait_connected

MESSAGES = [{"role": "user", "content": "hello there"}]
ANTHROPIC_BODY = {"model": "llama3.2", "max_tokens": 64, "messages": MESSAGES}

#: (path, body) pairs: every generation route, stream and not, and errors.
CASES = [
    ("/v1/chat/completions", {"model": "llama3.2", "messages": MESSAGES}),
    ("/v1/chat/completions", {"model": "llama3.2", "messages": MESSAGES, "stream": True}),
    (
        "/v1/chat/completions",
        {
            "model": "qwen3:8b",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("/v1/chat/completions", {"model": "llama3.2", "messages": []}),
    ("/v1/completions", {"model": "llama3.2", "prompt": "say hi"}),
    ("/v1/completions", {"model": "llama3.2", "prompt": "say hi", "stream": True}),
    ("/v1/embeddings", {"model": "nomic-embed-text", "input": ["a", "b"]}),
    ("/v1/embeddings", {"model": "nomic-embed-text", "input": []}),
    ("/v1/responses", {"model": "llama3.2", "input": "hello there"}),
    ("/v1/responses", {"model": "qwen3:8b", "input": "hello there", "stream": True}),
    ("/v1/messages", {**ANTHROPIC_BODY, "system": "be brief"}),
    ("/v1/messages", {**ANTHROPIC_BODY, "stream": True}),
    ("/v1/messages", {"model": "llama3.2", "messages": MESSAGES}),
]

_VOLATILE = re.compile(
    rb'("(?:id|created|created_at|completed_at|request_id|item_id)":)("[^"]*"|\d+)'
    rb"|(?:chatcmpl|cmpl|resp|msg|rs|req)[-_][0-9a-f]+"
)


def stable(body: bytes) -> bytes:
    """``body`` with ids and timestamps blanked."""
    return _VOLATILE.sub(lambda m: (m.group(1) or b"") + b"_", body)


async def both(fm: Foreman, method: str, path: str, body: Any = None) -> tuple[Any, Any]:
    """The same request through foreman and straight to the stand-in."""
    kwargs = {} if body is None else {"json": body}
    through = await fm.client.request(method, path, **kwargs)
    direct = await fm.target.request(method, path, **kwargs)
    return through, direct


@pytest.mark.parametrize(("path", "body"), CASES)
async def test_answers_are_the_stand_ins_byte_for_byte(
    fm: Foreman, autojump_clock: Any, path: str, body: dict[str, Any]
) -> None:
    through, direct = await both(fm, "POST", path, body)
    assert through.status_code == direct.status_code
    assert through.headers["content-type"] == direct.headers["content-type"]
    assert stable(through.content) == stable(direct.content)
    assert through.content  # never an empty answer


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/llama3.2", "/v1/models/nope"])
async def test_models_are_relayed(fm: Foreman, autojump_clock: Any, path: str) -> None:
    through, direct = await both(fm, "GET", path)
    assert (through.status_code, through.content) == (direct.status_code, direct.content)
    assert through.headers["content-type"] == direct.headers["content-type"]


async def test_unknown_model_is_foremans_own_answer_in_each_faces_shape(
    fm: Foreman, autojump_clock: Any
) -> None:
    before = fm.standin.chats_total
    chat = await fm.client.post("/v1/chat/completions", json=chat_body("nope:1b"))
    assert chat.status_code == 404
    assert chat.json() == {
        "error": {
            "message": "model 'nope:1b' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }
    message = await fm.client.post("/v1/messages", json={**ANTHROPIC_BODY, "model": "nope:1b"})
    assert message.status_code == 404
    assert message.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'nope:1b' not found"},
    }
    assert fm.standin.chats_total == before  # answered by foreman, after one re-poll


async def test_every_face_waits_its_turn_at_one_gate(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    standin = StandIn(token_rate=5.0)  # ~1.4 s per reply
    async with open_foreman(nursery, standin) as fm:
        answers: list[int] = []

        async def post(path: str, body: dict[str, Any]) -> None:
            answers.append((await fm.client.post(path, json=body)).status_code)

        async with trio.open_nursery() as inner:
            for path, body in [
                ("/api/chat", chat_body()),
                ("/v1/chat/completions", {"model": "llama3.2", "messages": MESSAGES}),
                ("/v1/chat/completions", {**chat_body(), "stream": True}),
                ("/v1/messages", {**ANTHROPIC_BODY, "stream": True}),
                ("/v1/responses", {"model": "llama3.2", "input": "hi", "stream": True}),
                ("/v1/completions", {"model": "llama3.2", "prompt": "hi"}),
                ("/api/generate", {"model": "llama3.2", "prompt": "hi"}),
            ]:
                inner.start_soon(post, path, body)
        assert answers == [200] * 7
        assert standin.max_chats_in_flight == 1 and standin.chats_total == 7


async def test_embeddings_pass_a_long_chat(nursery: trio.Nursery, autojump_clock: Any) -> None:
    standin = StandIn(token_rate=1.0, reply_tokens=30)  # a 31 s chat
    async with open_foreman(nursery, standin) as fm:
        async with trio.open_nursery() as inner:
            inner.start_soon(partial(fm.client.post, "/v1/chat/completions", json=chat_body()))
            await trio.sleep(2)
            assert standin.chats_in_flight == 1
            started = trio.current_time()
            body = {"model": "nomic-embed-text", "input": "hi"}
            embedded = await fm.client.post("/v1/embeddings", json=body)
            assert embedded.status_code == 200 and embedded.json()["object"] == "list"
            assert trio.current_time() - started < 1  # not after the chat's 29 s left
            assert standin.chats_in_flight == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**chat_body(), "stream": True}),
        ("/v1/messages", {**ANTHROPIC_BODY, "stream": True}),
    ],
)
async def test_the_first_event_arrives_before_the_target_sends_the_second(
    nursery: trio.Nursery, autojump_clock: Any, path: str, body: dict[str, Any]
) -> None:
    standin = StandIn(token_rate=1.0)  # one native line a second
    async with open_foreman(nursery, standin) as fm:
        started = trio.current_time()
        async with fm.client.stream("POST", path, json=body) as response:
            assert response.headers["content-type"] == "text/event-stream"
            async for chunk in response.aiter_raw():
                assert chunk.startswith((b"data: ", b"event: "))
                break
            assert trio.current_time() - started < 2  # the second line comes at 2 s


async def test_a_stream_that_breaks_ends_as_the_face_ends_it(
    fm: Foreman, autojump_clock: Any
) -> None:
    fm.standin.faults.die_after = 2
    chat = await fm.client.post("/v1/chat/completions", json={**chat_body(), "stream": True})
    events = chat.content.split(b"\n\n")
    assert chat.status_code == 200 and len(events) == 4  # two chunks, the error, ""
    error = json.loads(events[2].removeprefix(b"data: "))
    assert error["error"]["type"] == "api_error" and "broke" in error["error"]["message"]
    message = await fm.client.post("/v1/messages", json={**ANTHROPIC_BODY, "stream": True})
    last = message.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"event: error\ndata: ")
    assert json.loads(last.split(b"data: ", 1)[1])["error"]["type"] == "api_error"


async def test_foremans_errors_take_the_faces_shape(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    standin = StandIn()
    async with open_foreman(nursery, standin, max_body=2000) as fm:
        big = {**chat_body(), "messages": [{"role": "user", "content": "x" * 3000}]}
        too_large = await fm.client.post("/v1/chat/completions", json=big)
        assert too_large.status_code == 413
        assert too_large.headers["content-type"] == "application/json"
        assert too_large.json()["error"]["type"] == "api_error"
        big_message = {**ANTHROPIC_BODY, "messages": big["messages"]}
        too_large = await fm.client.post("/v1/messages", json=big_message)
        assert too_large.status_code == 413
        assert too_large.json()["error"]["type"] == "request_too_large"

        standin.reachable = False
        down = await fm.client.post("/v1/messages", json=ANTHROPIC_BODY)
        assert down.status_code == 503 and down.headers["retry-after"]
        assert down.json()["type"] == "error"
        assert down.json()["error"]["type"] == "overloaded_error"
        assert "unreachable" in down.json()["error"]["message"]

        odd = await fm.client.post("/v1/nothing-here", json={})  # gated, then Ollama's 404
        assert odd.status_code == 503  # (the target is down: foreman fails closed)


async def test_keys_as_each_face_sends_them(nursery: trio.Nursery, autojump_clock: Any) -> None:
    standin = StandIn()
    async with open_foreman(nursery, standin, token="s3cret-token") as fm:
        bare = await fm.client.post("/v1/chat/completions", json=chat_body())
        assert bare.status_code == 401 and bare.json()["error"]["message"] == "unauthorized"
        bare = await fm.client.post("/v1/messages", json=ANTHROPIC_BODY)
        assert bare.status_code == 401
        assert bare.json()["error"]["type"] == "authentication_error"
        bearer = {"authorization": "Bearer s3cret-token"}
        ok = await fm.client.post("/v1/chat/completions", json=chat_body(), headers=bearer)
        assert ok.status_code == 200
        assert "authorization" not in standin.last_headers  # never forwarded
        api_key = {"x-api-key": "s3cret-token"}
        ok = await fm.client.post("/v1/messages", json=ANTHROPIC_BODY, headers=api_key)
        assert ok.status_code == 200 and ok.json()["type"] == "message"
        assert "x-api-key" not in standin.last_headers
        wrong_face = await fm.client.post("/v1/chat/completions", json=chat_body(), headers=api_key)
        assert wrong_face.status_code == 401  # x-api-key is the Anthropic face's only


@asynccontextmanager
async def with_claude(
    nursery: trio.Nursery, standin: StandIn, key: str, reply: str
) -> AsyncIterator[tuple[Foreman, AnthropicStandIn]]:
    """foreman with a Claude stand-in (at :data:`CLAUDE`) as backend ``claude``, connected."""
    claude = AnthropicStandIn(api_key=key, reply=reply)
    transports = {CLAUDE: claude.transport(nursery)}
    async with open_foreman(nursery, standin, backend_transports=transports) as fm:
        added = await add(fm, name="claude", type="anthropic", endpoint=CLAUDE, api_key=key)
        await wait_connected(fm, added["id"])
        yield fm, claude


async def test_claude_speaks_messages_natively_and_refuses_openais_face(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_claude(nursery, standin, "sk-ant-faces-0003", "Bonjour.") as (fm, claude):
        model = claude.models[0]
        body = {**ANTHROPIC_BODY, "model": f"claude/{model}"}
        direct = await fm.client.post("/v1/messages", json=body)
        assert direct.status_code == 200, direct.text
        assert direct.headers["x-foreman-backend"] == f"claude/{model}"
        assert direct.json()["content"][0]["text"] == "Bonjour."
        assert direct.json()["model"] == model  # Anthropic's own answer, untouched
        seen = claude.requests[-1]
        assert seen["path"] == "/v1/messages"
        assert seen["headers"].get("x-api-key") == "sk-ant-faces-0003"

        streamed = await fm.client.post("/v1/messages", json={**body, "stream": True})
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert b"event: message_stop" in streamed.content

        openai_face = await fm.client.post(
            "/v1/chat/completions", json={**chat_body(), "model": f"claude/{model}"}
        )
        assert openai_face.status_code == 400
        message = openai_face.json()["error"]["message"]
        assert "claude" in message and "/v1/messages" in message

        listed = (await fm.client.get("/v1/models")).json()
        ids = [entry["id"] for entry in listed["data"]]
        assert listed["object"] == "list" and "llama3.2:latest" in ids
        assert f"claude/{model}" in ids
        # one of them by name, as the list shows it; a name not listed is OpenAI's 404
        one = await fm.client.get(f"/v1/models/claude/{model}")
        assert one.status_code == 200, one.text
        assert one.json() == next(e for e in listed["data"] if e["id"] == f"claude/{model}")
        missing = await fm.client.get("/v1/models/claude/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "not_found_error"


async def test_messages_fall_back_to_claude_while_ollama_is_down(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_claude(nursery, standin, "sk-ant-faces-0004", "Still here.") as (fm, claude):
        standin.reachable = False
        fell = await fm.client.post("/v1/messages", json=ANTHROPIC_BODY)
        assert fell.status_code == 200, fell.text
        assert fell.headers["x-foreman-backend"] == f"claude/{claude.models[0]}"
        assert fell.json()["content"][0]["text"] == "Still here."
        chat = await fm.client.post("/v1/chat/completions", json=chat_body())
        assert chat.status_code == 503  # OpenAI's face never falls back to Claude


async def test_an_openai_backend_speaks_openais_face_natively(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    gpt = OpenAIStandIn(api_key="sk-faces-gpt-0005", reply="Natively so.")
    async with open_foreman(
        nursery, standin, backend_transports={OPENAI: gpt.transport(nursery)}
    ) as fm:
        added = await add(
            fm, name="gpt", type="openai", endpoint=OPENAI, api_key="sk-faces-gpt-0005"
        )
        await wait_connected(fm, added["id"])
        await fm.client.put(
            "/admin/api/preferences", json={"aliases": {"smart": f"gpt/{gpt.models[0]}"}}
        )
        body = {"model": "smart", "messages": MESSAGES, "stream": True}
        streamed = await fm.client.post("/v1/chat/completions", json=body)
        assert streamed.status_code == 200, streamed.text
        assert streamed.headers["x-foreman-backend"] == f"gpt/{gpt.models[0]}"
        assert streamed.content.rstrip().endswith(b"data: [DONE]")
        seen = gpt.requests[-1]
        assert seen["path"] == "/v1/chat/completions" and seen["body"]["model"] == gpt.models[0]
        assert seen["headers"]["authorization"] == "Bearer sk-faces-gpt-0005"
        refused = await fm.client.post("/v1/messages", json={**ANTHROPIC_BODY, "model": "smart"})
        assert refused.status_code == 400 and refused.json()["type"] == "error"
        assert "gpt" in refused.json()["error"]["message"]
        listed = [m["id"] for m in (await fm.client.get("/v1/models")).json()["data"]]
        assert "smart" in listed and f"gpt/{gpt.models[0]}" in listed


async def test_faces_are_counted_by_route_and_tokens(fm: Foreman, autojump_clock: Any) -> None:
    await fm.client.post("/v1/chat/completions", json=chat_body())
    await fm.client.post(
        "/v1/messages", json={**ANTHROPIC_BODY, "model": "qwen3:8b", "stream": True}
    )
    await fm.client.post("/v1/models/llama3.2")
    text = (await fm.client.get("/metrics")).text
    assert 'foreman_requests_total{method="POST",route="openai_chat",status="200"} 1.0' in text
    assert 'route="anthropic_messages",status="200"} 1.0' in text
    assert 'foreman_tokens_total{direction="out",model="llama3.2"} 6.0' in text
    assert 'foreman_tokens_total{direction="out",model="qwen3:8b"} 8.0' in text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**chat_body(), "stream": True}),
        ("/v1/completions", {"model": "llama3.2", "prompt": "hi", "stream": True}),
        ("/v1/responses", {"model": "llama3.2", "input": "hi", "stream": True}),
        ("/v1/messages", {**ANTHROPIC_BODY, "stream": True}),
        ("/v1/chat/completions", chat_body()),
        ("/v1/messages", ANTHROPIC_BODY),
    ],
)
async def test_a_runner_that_dies_ends_each_face_as_ollama_ends_it(
    fm: Foreman, autojump_clock: Any, path: str, body: dict[str, Any]
) -> None:
    fm.standin.faults.runner_error_after = 2
    through, direct = await both(fm, "POST", path, body)
    assert through.status_code == direct.status_code
    assert stable(through.content) == stable(direct.content)
    if body.get("stream"):  # no [DONE], no message_stop: the stream just stops
        assert b"[DONE]" not in through.content and b"message_stop" not in through.content
        assert b"response.completed" not in through.content
    else:
        assert (
            through.status_code == 500
            and b"model runner has unexpectedly stopped" in through.content
        )


def event_names(body: bytes) -> list[str]:
    return [e.split(b"\n")[0].removeprefix(b"event: ").decode() for e in body.split(b"\n\n") if e]


async def test_the_stand_in_answers_as_ollamas_middlewares_do(
    fm: Foreman, autojump_clock: Any
) -> None:
    target = fm.target
    aborted = await target.post("/v1/messages", json={"model": "llama3.2", "messages": MESSAGES})
    assert aborted.status_code == 400  # the middleware's own: gin's c.JSON, no newline
    assert aborted.headers["content-type"] == "application/json; charset=utf-8"
    assert not aborted.content.endswith(b"\n")
    assert aborted.json()["error"]["type"] == "invalid_request_error"
    assert aborted.json()["request_id"].startswith("req_")
    missing = await target.post("/v1/chat/completions", json=chat_body("nope:1b"))
    assert missing.status_code == 404  # the handler's, through writeError: json.Encoder's
    assert missing.headers["content-type"] == "application/json"
    assert missing.content.endswith(b"}\n")

    chunks = await target.post("/v1/chat/completions", json={**chat_body(), "stream": True})
    events = [e for e in chunks.content.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    first, finish = json.loads(events[0][6:]), json.loads(events[-2][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "hello"}
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}

    streamed = await target.post("/v1/messages", json={**ANTHROPIC_BODY, "stream": True})
    names = event_names(streamed.content)
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[2:-3] == ["content_block_delta"] * 6
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    responses = await target.post(
        "/v1/responses", json={"model": "llama3.2", "input": "hi", "stream": True}
    )
    names = event_names(responses.content)
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-1] == "response.completed" and "[DONE]" not in names
    # the handler ran for all but the one the middleware refused
    assert fm.standin.chats_total == 4 and fm.standin.chats_in_flight == 0


async def test_a_full_gate_is_a_503_with_retry_after_in_the_faces_shape(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    standin = StandIn(token_rate=2.0)
    async with open_foreman(nursery, standin, max_queue=1) as fm:
        answers: list[Any] = []

        async def post(path: str, body: dict[str, Any]) -> None:
            answers.append(await fm.client.post(path, json=body))

        async with trio.open_nursery() as inner:
            inner.start_soon(post, "/v1/chat/completions", chat_body())
            await trio.sleep(0.1)
            inner.start_soon(post, "/v1/messages", ANTHROPIC_BODY)
            await trio.sleep(0.1)
            inner.start_soon(post, "/v1/messages", ANTHROPIC_BODY)
        busy = [a for a in answers if a.status_code == 503]
        assert len(busy) == 1 and busy[0].headers["retry-after"] == "1"
        assert busy[0].json()["error"]["type"] == "overloaded_error"
        assert busy[0].json()["error"]["message"].startswith("server busy, please try again.")


async def test_a_stream_that_goes_quiet_ends_with_the_faces_error_event(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    standin = StandIn()
    async with open_foreman(nursery, standin, idle_timeout=5.0) as fm:
        standin.faults.stall_after = 3
        started = trio.current_time()
        answer = await fm.client.post(
            "/v1/responses", json={"model": "llama3.2", "input": "hi", "stream": True}
        )
        assert trio.current_time() - started == pytest.approx(5.0 + 3 * 0.1, abs=0.5)
        last = answer.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        assert last.startswith(b"event: response.failed\ndata: ")
        failed = json.loads(last.split(b"data: ", 1)[1])
        assert (
            failed["response"]["status"] == "failed"
            and "timed out" in failed["response"]["error"]["message"]
        )
        await trio.testing.wait_all_tasks_blocked()
        assert fm.gw.gate.statistics().in_flight == 0
