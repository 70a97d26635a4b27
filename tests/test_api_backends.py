"""Claude and OpenAI-compatible backends behind Ollama's face, end to end through foreman.

The stand-ins (``foreman.standins.anthropic``, ``foreman.standins.openai``) are the APIs;
foreman's translators reach them through the official SDKs.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from foreman.standins.anthropic import AnthropicStandIn
from foreman.standins.ollama import StandIn
from foreman.standins.openai import OpenAIStandIn

from .conftest import Foreman, chat_body, open_foreman
from .test_backends import wait_connected

CLAUDE = "http://claude.test"
OPENAI = "http://openai.test/v1"
REPLY = "Paris is the capital of France and a lovely city."


async def add(fm: Foreman, **fields: Any) -> dict[str, Any]:
    answer = await fm.client.post("/admin/api/backends", json=fields)
    assert answer.status_code == 201, answer.text
    return answer.json()


def lines_of(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines()]


async def test_claude_answers_in_ollamas_shape_through_an_alias(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    claude = AnthropicStandIn(api_key="sk-ant-good-key-0001", reply=REPLY)
    claude.delay = 0.5
    async with open_foreman(
        nursery, standin, backend_transports={CLAUDE: claude.transport(nursery)}
    ) as fm:
        added = await add(
            fm, name="claude", type="anthropic", endpoint=CLAUDE, api_key="sk-ant-good-key-0001"
        )
        assert added["api_key"] == "…0001"
        status = await wait_connected(fm, added["id"])
        assert status["state"] == "connected" and status["model_count"] == len(claude.models)
        assert claude.requests[-1]["headers"]["authorization"] == "Bearer sk-ant-good-key-0001"
        await fm.client.put("/admin/api/preferences", json={"aliases": {"research": "claude"}})
        selected = claude.models[0]

        # streamed: each delta leaves as its own line, while the next is still coming
        arrivals: list[tuple[float, dict[str, Any]]] = []
        request = fm.client.build_request(
            "POST", "/api/chat", json=chat_body("research", text="capital of France?")
        )
        response = await fm.client.send(request, stream=True)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["x-foreman-backend"] == f"claude/{selected}"
        async for line in response.aiter_lines():
            arrivals.append((trio.current_time(), json.loads(line)))
        *deltas, final = [line for _, line in arrivals]
        assert len(deltas) > 3
        assert "".join(d["message"]["content"] for d in deltas) == REPLY
        assert all(d["model"] == "research" and d["done"] is False for d in deltas)
        times = [t for t, _ in arrivals[:-1]]  # the deltas: 0.5 s apart at the stand-in
        assert all(b - a > 0.49 for a, b in zip(times, times[1:], strict=False))
        assert final["done"] is True and final["done_reason"] == "stop"
        assert list(final)[:4] == ["model", "created_at", "message", "done"]
        assert final["eval_count"] == len(REPLY.split())
        assert final["prompt_eval_count"] == 3 and final["total_duration"] > 1e9  # ns
        sent = claude.last_body
        assert sent["model"] == selected and sent["max_tokens"] == 4096
        assert [m["role"] for m in sent["messages"]] == ["user"]
        assert sent["messages"][0]["content"] == [{"type": "text", "text": "capital of France?"}]

        # stream: false: one object, with a length
        whole = await fm.client.post(
            "/api/generate",
            json={"model": "claude/claude-haiku-4-5", "prompt": "hi", "stream": False},
        )
        assert whole.status_code == 200, whole.text
        assert whole.headers["x-foreman-backend"] == "claude/claude-haiku-4-5"
        assert whole.headers["content-length"] == str(len(whole.content))
        body = whole.json()
        assert body["response"] == REPLY and body["done"] is True
        assert body["model"] == "claude/claude-haiku-4-5"

        # embeds cannot go to Claude; Claude's 404 is Ollama's
        embed = await fm.client.post("/api/embed", json={"model": "research", "input": "x"})
        assert embed.status_code == 400 and "no embeddings" in embed.json()["error"]
        unknown = await fm.client.post("/api/chat", json=chat_body("claude/claude-9", stream=False))
        assert unknown.status_code == 404 and "not found" in unknown.json()["error"]
        assert claude.max_in_flight == 1  # nothing ran in parallel here: one at a time asked
        assert standin.chats_total == 0


async def test_fallback_to_claude_while_ollama_is_down_and_back(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    claude = AnthropicStandIn(api_key="sk-ant-fallback-0002", reply=REPLY)
    async with open_foreman(
        nursery, standin, backend_transports={CLAUDE: claude.transport(nursery)}
    ) as fm:
        added = await add(
            fm, name="claude", type="anthropic", endpoint=CLAUDE, api_key="sk-ant-fallback-0002"
        )
        await wait_connected(fm, added["id"])
        ok = await fm.client.post("/api/chat", json=chat_body(stream=False))
        assert ok.headers["x-foreman-backend"] == "ollama/llama3.2"

        standin.reachable = False  # the next chat finds out when it connects
        fell = await fm.client.post("/api/chat", json=chat_body(stream=False))
        assert fell.status_code == 200, fell.text
        assert fell.headers["x-foreman-backend"] == f"claude/{claude.models[0]}"
        assert fell.json()["message"]["content"] == REPLY
        assert fell.json()["model"] == "llama3.2"  # the name the client asked for
        # and later chats go straight there, while the backend is unhealthy
        streamed = await fm.client.post("/api/chat", json=chat_body())
        assert streamed.headers["x-foreman-backend"].startswith("claude/")
        assert lines_of(streamed.content)[-1]["done"] is True

        off = {"fallback_to_claude": False}
        assert (await fm.client.put("/admin/api/preferences", json=off)).status_code == 200
        refused = await fm.client.post("/api/chat", json=chat_body(stream=False))
        assert refused.status_code == 503 and "unreachable" in refused.json()["error"]
        await fm.client.put("/admin/api/preferences", json={})  # fallback on again

        standin.reachable = True
        await trio.sleep(6)  # the degraded poller looks again within 5 s
        back = await fm.client.post("/api/chat", json=chat_body(stream=False))
        assert back.headers["x-foreman-backend"] == "ollama/llama3.2"
        assert standin.chats_total == 2 and claude.generations_total == 2


async def test_claude_failures_are_clear_errors(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    claude = AnthropicStandIn(api_key="sk-ant-right-key-0003", reply=REPLY)
    async with open_foreman(
        nursery, standin, backend_transports={CLAUDE: claude.transport(nursery)}
    ) as fm:
        wrong = await add(fm, name="claude", type="anthropic", endpoint=CLAUDE, api_key="sk-nope")
        status = await wait_connected(fm, wrong["id"])
        assert status["state"] == "unauthorized" and "API key" in status["last_error"]
        await fm.client.patch(
            f"/admin/api/backends/{wrong['id']}", json={"api_key": "sk-ant-right-key-0003"}
        )
        assert (await wait_connected(fm, wrong["id"]))["state"] == "connected"

        claude.overloaded = 1
        busy = await fm.client.post("/api/chat", json=chat_body("claude/", stream=False))
        assert busy.status_code == 503 and "busy" in busy.json()["error"]

        claude.fail_midstream = True
        broken = await fm.client.post("/api/chat", json=chat_body("claude/"))
        assert broken.status_code == 200
        last = lines_of(broken.content)[-1]
        assert set(last) == {"error"} and "overloaded" in last["error"].lower()


async def test_an_openai_compatible_backend(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    server = OpenAIStandIn(api_key="sk-openai-key-0004", reply=REPLY)
    async with open_foreman(
        nursery, standin, backend_transports={OPENAI: server.transport(nursery)}
    ) as fm:
        added = await add(
            fm, name="gpt", type="openai", endpoint=OPENAI, api_key="sk-openai-key-0004"
        )
        assert (await wait_connected(fm, added["id"]))["state"] == "connected"
        body = chat_body("gpt/gpt-4o-mini", options={"temperature": 0.2, "num_predict": 50})
        streamed = await fm.client.post("/api/chat", json=body)
        assert streamed.headers["x-foreman-backend"] == "gpt/gpt-4o-mini"
        *deltas, final = lines_of(streamed.content)
        assert "".join(d["message"]["content"] for d in deltas) == REPLY
        assert final["done_reason"] == "stop" and final["eval_count"] == len(REPLY.split())
        sent = server.last_body
        assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50
        tags = (await fm.client.get("/api/tags")).json()["models"]
        assert "gpt/gpt-4o-mini" in [m["name"] for m in tags]
