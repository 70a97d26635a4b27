"""The Claude and OpenAI translators against canned SSE bodies (``httpx2.MockTransport``).

The bodies are written by hand after the APIs' documented event sequences: Anthropic's
``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``...,
``content_block_stop``, ``message_delta``, ``message_stop``; OpenAI's
``chat.completion.chunk``\\ s, a usage chunk and ``data: [DONE]``. No stand-in server.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest
import trio
import trio.lowlevel

from foreman.backends.anthropic import AnthropicBackend
from foreman.backends.openai import OpenAIBackend
from foreman.backends.translate import created_at, media_type
from foreman.dataplane.errors import (
    ModelNotFound,
    TargetBroken,
    TargetBusy,
    TargetStatus,
    TargetTimeout,
    TargetUnauthorized,
    TargetUnreachable,
)

Backend = AnthropicBackend | OpenAIBackend
CREATED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 16).decode()
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
FINAL_KEYS = [
    "model",
    "created_at",
    "message",
    "done",
    "done_reason",
    "total_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]


# --- canned upstreams ----------------------------------------------------------------


def anthropic_sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


def ev(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    """One Anthropic event: its name, and its data (which repeats the name as ``type``)."""
    return kind, {"type": kind, **fields}


def message_start(input_tokens: int = 25, **usage: int) -> tuple[str, dict[str, Any]]:
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-x",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1, **usage},
    }
    return ev("message_start", message=message)


def text_block(index: int, *pieces: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ev("content_block_start", index=index, content_block={"type": "text", "text": ""}),
        ev("ping"),
        *(
            ev("content_block_delta", index=index, delta={"type": "text_delta", "text": p})
            for p in pieces
        ),
        ev("content_block_stop", index=index),
    ]


def tool_block(index: int, id_: str, name: str, *pieces: str) -> list[tuple[str, dict[str, Any]]]:
    block = {"type": "tool_use", "id": id_, "name": name, "input": {}}
    return [
        ev("content_block_start", index=index, content_block=block),
        *(
            ev(
                "content_block_delta",
                index=index,
                delta={"type": "input_json_delta", "partial_json": p},
            )
            for p in pieces
        ),
        ev("content_block_stop", index=index),
    ]


def message_end(stop_reason: str = "end_turn", output_tokens: int = 15) -> list[tuple[str, Any]]:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return [
        ev("message_delta", delta=delta, usage={"output_tokens": output_tokens}),
        ev("message_stop"),
    ]


def claude_hello(stop_reason: str = "end_turn") -> bytes:
    text = text_block(0, "Hello", " <world>")
    return anthropic_sse(message_start(), *text, *message_end(stop_reason))


def openai_sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-x",
        "choices": choices,
        **extra,
    }


def usage(prompt: int = 9, completion: int = 3) -> dict[str, Any]:
    total = prompt + completion
    return chunk(
        usage={"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
    )


def image(data: str, media_type: str = "image/png") -> dict[str, Any]:
    """Claude's image block."""
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def gpt_hello(finish: str = "stop") -> bytes:
    return openai_sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": " <world>"}),
        chunk({}, finish),
        usage(),
    )


class Stream(httpx2.AsyncByteStream):
    """A response body: chunks, with ``trio.sleep(seconds)`` for a float, raising an exception."""

    def __init__(self, *parts: bytes | float | Exception) -> None:
        self.parts = parts
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if isinstance(part, float):
                await trio.sleep(part)
            elif isinstance(part, Exception):
                raise part
            else:
                yield part

    async def aclose(self) -> None:
        self.closed = True


class Upstream:
    """A MockTransport handler: records each request, answers with the next response."""

    def __init__(self, *responses: httpx2.Response | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx2.Request] = []

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        self.requests.append(request)
        response = self.responses.pop(0)
        if isinstance(response, Exception):
            raise response
        return response

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)

    def transport(self) -> httpx2.MockTransport:
        return httpx2.MockTransport(self)


def sse(body: bytes | Stream) -> httpx2.Response:
    headers = {"content-type": "text/event-stream"}
    if isinstance(body, Stream):
        return httpx2.Response(200, headers=headers, stream=body)
    return httpx2.Response(200, headers=headers, content=body)


def claude(upstream: Upstream, api_key: str | None = "sk-ant-test") -> AnthropicBackend:
    return AnthropicBackend("claude", None, api_key, transport=upstream.transport())


def gpt(upstream: Upstream, api_key: str | None = "sk-test") -> OpenAIBackend:
    return OpenAIBackend("gpt", "http://gpt.local/v1", api_key, transport=upstream.transport())


async def read(body: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in body]


async def ask(
    backend: Backend, fields: dict[str, Any], endpoint: str = "chat", model: str = "backend-model"
) -> tuple[str, list[bytes]]:
    content_type, body = await backend.answer(endpoint, fields, model)  # type: ignore[arg-type]
    return content_type, await read(body)


def parsed(lines: list[bytes]) -> list[dict[str, Any]]:
    """Each line as an object (keys in their order), after checking framing and created_at."""
    objects = []
    for line in lines:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        obj = json.loads(line)
        if "created_at" in obj:
            assert CREATED_AT.fullmatch(obj["created_at"])
            obj["created_at"] = "T"  # keeps its place among the keys
        objects.append(obj)
    return objects


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "my-claude", "messages": list(messages), **extra}


def user(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": text, **extra}


# --- Ollama → Claude --------------------------------------------------------------------


async def test_claude_request_mapping() -> None:
    upstream = Upstream(sse(claude_hello()))
    fields = chat(
        {"role": "system", "content": "Be brief."},
        user("What is this?", images=[PNG, JPEG]),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "system", "content": "Answer in French."},
        user("And now?"),
        tools=[WEATHER_TOOL],
        options={
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "stop": ["END"],
            "num_predict": 100,
        },
        format="json",
        keep_alive="5m",
        think=True,
    )
    await ask(claude(upstream), fields, model="claude-x")

    sent = upstream.json
    request = upstream.requests[-1]
    assert request.url == "https://api.anthropic.com/v1/messages"
    assert request.headers["authorization"] == "Bearer sk-ant-test"
    assert request.headers["x-stainless-retry-count"] == "0"
    tool_id = sent["messages"][1]["content"][0]["id"]
    assert sent == {
        "max_tokens": 100,
        "messages": [
            {
                "role": "user",
                "content": [
                    image(PNG),
                    image(JPEG, "image/jpeg"),
                    {"type": "text", "text": "What is this?"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": tool_id,
                        "name": "get_weather",
                        "input": {"city": "Tokyo"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "sunny"}],
            },
            {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
        ],
        "model": "claude-x",
        "stop_sequences": ["END"],
        "stream": True,
        "system": "Be brief.\n\nAnswer in French.",
        "tools": [
            {
                "name": "get_weather",
                "description": "The weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    }
    # API version 2026-10-21 (SDK 2.x) refuses temperature, top_p and top_k: left out
    assert tool_id == "call_2_0"  # from its position: the same on every turn


async def test_claude_tool_results_pair_with_their_calls() -> None:
    upstream = Upstream(sse(claude_hello()))
    calls = [
        {"id": "toolu_a", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
        {"id": "toolu_b", "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}},
    ]
    fields = chat(
        user("weather and time?"),
        {"role": "assistant", "content": "Let me look.", "tool_calls": calls},
        {"role": "tool", "content": "12:00", "tool_call_id": "toolu_b"},
        {"role": "tool", "content": "rain"},
    )
    await ask(claude(upstream), fields)
    assistant, results = upstream.json["messages"][1:]
    assert assistant["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {"zone": "CET"}},
    ]
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "12:00"},
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "rain"},
        ],
    }


@pytest.mark.parametrize("num_predict", [None, -1, -2, 0])
async def test_claude_always_gets_max_tokens(num_predict: int | None) -> None:
    upstream = Upstream(sse(claude_hello()))
    options = {} if num_predict is None else {"options": {"num_predict": num_predict}}
    await ask(claude(upstream), chat(user(), **options))
    assert upstream.json["max_tokens"] == 4096


async def test_claude_generate_is_one_user_message() -> None:
    upstream = Upstream(sse(claude_hello()))
    fields = {
        "model": "c",
        "prompt": "Describe",
        "system": "Be poetic.",
        "images": [PNG],
        "suffix": "x",
        "raw": True,
    }
    await ask(claude(upstream), fields, endpoint="generate")
    sent = upstream.json
    assert sent["system"] == "Be poetic."
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [image(PNG), {"type": "text", "text": "Describe"}],
        }
    ]


async def test_claude_without_key_sends_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-the-environment")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://elsewhere")
    upstream = Upstream(sse(claude_hello()))
    await ask(claude(upstream, api_key=None), chat(user()))
    request = upstream.requests[-1]
    assert request.url.host == "api.anthropic.com"
    assert "authorization" not in request.headers and "x-api-key" not in request.headers


# --- Claude → Ollama --------------------------------------------------------------------


async def test_claude_stream_lines(autojump_clock: trio.abc.Clock) -> None:
    body = Stream(
        1.0,  # the time to the first token...
        anthropic_sse(message_start(input_tokens=20, cache_read_input_tokens=5)),
        anthropic_sse(*text_block(0, "Hello")[:3]),
        2.0,  # ... and the rest
        anthropic_sse(*text_block(0, " <world>")[2:]),
        anthropic_sse(*message_end(output_tokens=15)),
    )
    content_type, lines = await ask(claude(Upstream(sse(body))), chat(user()))
    assert content_type == "application/x-ndjson"
    assert lines[1] == lines[1].replace(b"<", b"")  # Go's escaping of <>&
    assert b'"content":" \\u003cworld\\u003e"' in lines[1]
    first, second, final = parsed(lines)
    assert first == {
        "model": "my-claude",
        "created_at": "T",
        "message": {"role": "assistant", "content": "Hello"},
        "done": False,
    }
    assert second["message"]["content"] == " <world>"
    assert list(final) == FINAL_KEYS
    assert final == {
        "model": "my-claude",
        "created_at": "T",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 3_000_000_000,
        "prompt_eval_count": 25,  # input_tokens + cache_read_input_tokens
        "prompt_eval_duration": 1_000_000_000,
        "eval_count": 15,
        "eval_duration": 2_000_000_000,
    }
    assert body.closed


@pytest.mark.parametrize(
    ("stop_reason", "done_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "stop"),
        ("max_tokens", "length"),
    ],
)
async def test_claude_done_reason(stop_reason: str, done_reason: str) -> None:
    _, lines = await ask(claude(Upstream(sse(claude_hello(stop_reason)))), chat(user()))
    assert parsed(lines)[-1]["done_reason"] == done_reason


async def test_claude_not_streaming(autojump_clock: trio.abc.Clock) -> None:
    body = Stream(0.5, claude_hello())
    content_type, chunks = await ask(claude(Upstream(sse(body))), chat(user(), stream=False))
    assert content_type == "application/json; charset=utf-8"
    assert len(chunks) == 1 and not chunks[0].endswith(b"\n")
    answer = json.loads(chunks[0])
    assert list(answer) == FINAL_KEYS[:-1]  # eval_duration is zero: left out, as Ollama does
    assert answer["message"] == {"role": "assistant", "content": "Hello <world>"}
    assert (answer["done"], answer["eval_count"], answer["prompt_eval_count"]) == (True, 15, 25)
    assert answer["total_duration"] == answer["prompt_eval_duration"] == 500_000_000


async def test_claude_generate_lines() -> None:
    _, lines = await ask(
        claude(Upstream(sse(claude_hello()))), {"model": "g", "prompt": "hi"}, "generate"
    )
    first, second, final = parsed(lines)
    assert first == {"model": "g", "created_at": "T", "response": "Hello", "done": False}
    assert list(final)[:5] == ["model", "created_at", "response", "done", "done_reason"]
    assert (final["response"], final["done"], "context" not in final) == ("", True, True)
    _, chunks = await ask(
        claude(Upstream(sse(claude_hello()))),
        {"model": "g", "prompt": "hi", "stream": False},
        "generate",
    )
    assert json.loads(chunks[0])["response"] == "Hello <world>"


async def test_claude_tool_calls() -> None:
    events = (
        message_start(),
        *text_block(0, "Checking."),
        *tool_block(1, "toolu_01", "get_weather", "", '{"city": "To', 'kyo"}'),
        *message_end("tool_use", 40),
    )
    fields = chat(user("weather in Tokyo?"), tools=[WEATHER_TOOL])
    _, lines = await ask(claude(Upstream(sse(anthropic_sse(*events)))), fields)
    text, call, final = parsed(lines)
    assert text["message"] == {"role": "assistant", "content": "Checking."}
    assert call["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "toolu_01",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}},
            }
        ],
    }
    assert call["done"] is False
    assert final["done_reason"] == "stop" and "tool_calls" not in final["message"]

    _, chunks = await ask(
        claude(Upstream(sse(anthropic_sse(*events)))), {**fields, "stream": False}
    )
    assert json.loads(chunks[0])["message"] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": call["message"]["tool_calls"],
    }


async def test_nothing_to_answer_is_a_load_call() -> None:
    upstream = Upstream()
    content_type, chunks = await ask(claude(upstream), chat())
    assert content_type == "application/json; charset=utf-8"
    answer = json.loads(chunks[0])
    assert CREATED_AT.fullmatch(answer.pop("created_at"))
    assert answer == {
        "model": "my-claude",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "load",
    }
    _, chunks = await ask(gpt(upstream), {"model": "g", "keep_alive": 0}, "generate")
    assert json.loads(chunks[0])["done_reason"] == "unload"
    assert upstream.requests == []


# --- errors -----------------------------------------------------------------------------


def anthropic_error(status: int, kind: str, message: str) -> httpx2.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}
    return httpx2.Response(status, json=body)


def openai_error(status: int, message: str) -> httpx2.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }
    return httpx2.Response(status, json=body)


STATUSES = [
    (401, TargetUnauthorized),
    (403, TargetUnauthorized),
    (404, ModelNotFound),
    (429, TargetBusy),
    (503, TargetBusy),
    (529, TargetBusy),
    (400, TargetStatus),
    (500, TargetBroken),
]


@pytest.mark.parametrize(("status", "error"), STATUSES)
async def test_claude_error_statuses(status: int, error: type[Exception]) -> None:
    upstream = Upstream(anthropic_error(status, "some_error", "the API's words"))
    with pytest.raises(error) as caught:
        await claude(upstream).answer("chat", chat(user()), "claude-x")
    if status == 404:
        assert str(caught.value) == "model 'claude-x' not found"
    else:
        assert caught.value.kind == "anthropic backend" and caught.value.target == "claude"
        assert caught.value.detail == f"{status}: the API's words"
    if status == 400:
        assert caught.value.status == 400


@pytest.mark.parametrize(("status", "error"), STATUSES)
async def test_openai_error_statuses(status: int, error: type[Exception]) -> None:
    upstream = Upstream(openai_error(status, "the server's words"))
    with pytest.raises(error) as caught:
        await gpt(upstream).answer("chat", chat(user()), "gpt-x")
    if status == 404:
        assert str(caught.value) == "model 'gpt-x' not found"
    else:
        assert caught.value.kind == "openai backend" and caught.value.target == "gpt"
        assert caught.value.detail == f"{status}: the server's words"


@pytest.mark.parametrize("make", [claude, gpt])
@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (httpx2.ConnectError("[Errno 111] Connection refused"), TargetUnreachable),
        (httpx2.ConnectTimeout("timed out"), TargetUnreachable),
        (httpx2.ReadTimeout("timed out"), TargetTimeout),
        (httpx2.RemoteProtocolError("peer closed"), TargetBroken),
    ],
)
async def test_transport_failures(
    make: Callable[[Upstream], Backend], failure: Exception, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await make(Upstream(failure)).answer("chat", chat(user()), "m")
    with pytest.raises(error):
        await make(Upstream(failure)).models()


async def test_claude_error_event_before_the_first_delta_raises() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream = Upstream(sse(anthropic_sse(message_start(), ("error", error))))
    with pytest.raises(TargetBusy, match="529: Overloaded"):
        await claude(upstream).answer("chat", chat(user()), "claude-x")


async def test_claude_error_event_midway_ends_with_an_error_line() -> None:
    error = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
    body = Stream(
        anthropic_sse(message_start(), *text_block(0, "Hel")[:3]), anthropic_sse(("error", error))
    )
    _, lines = await ask(claude(Upstream(sse(body))), chat(user()))
    assert len(lines) == 2
    assert parsed(lines)[0]["message"]["content"] == "Hel"
    assert json.loads(lines[1]) == {
        "error": "anthropic backend claude broke the connection: 500: Internal server error"
    }
    assert body.closed


@pytest.mark.parametrize(
    "make_body",
    [
        lambda head: Stream(head, httpx2.ReadError("connection reset")),
        lambda head: Stream(head),  # ends without message_delta / message_stop
    ],
)
async def test_claude_stream_that_breaks(make_body: Callable[[bytes], Stream]) -> None:
    body = make_body(anthropic_sse(message_start(), *text_block(0, "Hel")[:3]))
    _, lines = await ask(claude(Upstream(sse(body))), chat(user()))
    assert len(lines) == 2
    assert list(json.loads(lines[1])) == ["error"]
    assert "anthropic backend claude broke the connection" in json.loads(lines[1])["error"]


async def test_openai_error_midway_ends_with_an_error_line() -> None:
    error = {
        "error": {"message": "model crashed", "type": "server_error", "param": None, "code": None}
    }
    body = Stream(
        openai_sse(chunk({"role": "assistant", "content": "Hel"}), done=False), openai_sse(error)
    )
    _, lines = await ask(gpt(Upstream(sse(body))), chat(user()))
    assert parsed(lines)[0]["message"]["content"] == "Hel"
    assert json.loads(lines[1]) == {
        "error": "openai backend gpt broke the connection: model crashed"
    }
    assert len(lines) == 2


async def test_nothing_is_left_for_the_garbage_collector() -> None:
    """A body closed midway (the client left), an error before or after the first delta:
    the upstream is closed, and no async generator is left suspended (trio would warn
    when it is collected, and filterwarnings makes that an error)."""
    never = trio.Event()

    class Forever(Stream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield anthropic_sse(message_start(), *text_block(0, "Hello", "more", "and more")[:4])
            await never.wait()

    forever = Forever()
    _, lines = await claude(Upstream(sse(forever))).answer("chat", chat(user()), "claude-x")
    assert b"Hello" in await lines.__anext__()
    await lines.aclose()  # type: ignore[attr-defined]
    assert forever.closed

    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    for head in ((message_start(),), (message_start(), *text_block(0, "Hel")[:3])):
        body = Stream(
            anthropic_sse(*head), anthropic_sse(("error", error)), anthropic_sse(ev("ping"))
        )
        with contextlib.suppress(TargetBusy):
            await ask(claude(Upstream(sse(body))), chat(user()))
        assert body.closed
    body = Stream(openai_sse(chunk({"content": "Hel"}), {"error": {"message": "no"}}, usage()))
    await ask(gpt(Upstream(sse(body))), chat(user()))
    assert body.closed

    gc.collect()
    await trio.lowlevel.checkpoint()


async def test_cancelled_while_waiting_for_the_upstream(autojump_clock: trio.abc.Clock) -> None:
    """Before ``answer`` returns or while the body waits: the upstream is closed at once."""
    body = Stream(anthropic_sse(message_start()), 100.0)
    with trio.move_on_after(1) as scope:
        await claude(Upstream(sse(body))).answer("chat", chat(user()), "claude-x")
    assert scope.cancelled_caught and body.closed

    body = Stream(anthropic_sse(message_start(), *text_block(0, "Hel")[:3]), 100.0)
    _, lines = await claude(Upstream(sse(body))).answer("chat", chat(user()), "claude-x")
    await lines.__anext__()
    with trio.move_on_after(1) as scope:
        await lines.__anext__()
    assert scope.cancelled_caught and body.closed


# --- Ollama ⇄ OpenAI --------------------------------------------------------------------


async def test_openai_request_mapping() -> None:
    upstream = Upstream(sse(gpt_hello()))
    fields = chat(
        {"role": "system", "content": "Be brief."},
        user("What is this?", images=[PNG]),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        tools=[WEATHER_TOOL],
        options={
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "stop": ["END"],
            "num_predict": 100,
            "seed": 7,
        },
        format="json",
    )
    await ask(gpt(upstream), fields, model="gpt-x")
    request = upstream.requests[-1]
    assert request.url == "http://gpt.local/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert upstream.json == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_2_0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_2_0", "content": "sunny"},
        ],
        "model": "gpt-x",
        "max_tokens": 100,
        "response_format": {"type": "json_object"},
        "seed": 7,
        "stop": ["END"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "tools": [WEATHER_TOOL],
        "top_p": 0.9,
    }


async def test_openai_generate_schema_and_no_key() -> None:
    upstream = Upstream(sse(gpt_hello()))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    fields = {"model": "g", "prompt": "Count", "system": "Be exact.", "format": schema}
    await ask(gpt(upstream, api_key=None), fields, endpoint="generate")
    sent = upstream.json
    assert sent["messages"] == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Count"},
    ]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert "max_tokens" not in sent and "top_k" not in sent
    assert "authorization" not in upstream.requests[-1].headers


async def test_openai_stream_lines(autojump_clock: trio.abc.Clock) -> None:
    body = Stream(
        0.25,
        openai_sse(
            chunk({"role": "assistant", "content": ""}), chunk({"content": "Hello"}), done=False
        ),
        0.75,
        openai_sse(chunk({"content": " <world>"}), chunk({}, "stop"), usage()),
    )
    content_type, lines = await ask(gpt(Upstream(sse(body))), chat(user()))
    assert content_type == "application/x-ndjson"
    first, second, final = parsed(lines)
    assert first["message"] == {"role": "assistant", "content": "Hello"}
    assert second["message"] == {"role": "assistant", "content": " <world>"}
    assert list(final) == FINAL_KEYS
    assert (final["done_reason"], final["prompt_eval_count"], final["eval_count"]) == ("stop", 9, 3)
    assert final["total_duration"] == 1_000_000_000
    assert (final["prompt_eval_duration"], final["eval_duration"]) == (250_000_000, 750_000_000)


@pytest.mark.parametrize(
    ("finish", "done_reason"), [("stop", "stop"), ("length", "length"), ("tool_calls", "stop")]
)
async def test_openai_done_reason(finish: str, done_reason: str) -> None:
    _, lines = await ask(gpt(Upstream(sse(gpt_hello(finish)))), chat(user()))
    assert parsed(lines)[-1]["done_reason"] == done_reason


async def test_openai_tool_calls_and_not_streaming() -> None:
    call = {
        "index": 0,
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    body = openai_sse(
        chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Tokyo"}'}}]}),
        chunk({}, "tool_calls"),
        usage(30, 12),
    )
    fields = chat(user("weather?"), tools=[WEATHER_TOOL])
    _, lines = await ask(gpt(Upstream(sse(body))), fields)
    calls, final = parsed(lines)
    assert calls["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_abc",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}},
            }
        ],
    }
    assert final["eval_count"] == 12

    content_type, chunks = await ask(gpt(Upstream(sse(body))), {**fields, "stream": False})
    answer = json.loads(chunks[0])
    assert content_type == "application/json; charset=utf-8" and list(answer) == FINAL_KEYS
    assert answer["message"] == calls["message"]


# --- models -----------------------------------------------------------------------------


async def test_claude_models_reads_every_page() -> None:
    def page(ids: list[str], more: bool) -> httpx2.Response:
        data = [
            {"id": i, "type": "model", "display_name": i, "created_at": "2025-01-01T00:00:00Z"}
            for i in ids
        ]
        return httpx2.Response(
            200, json={"data": data, "has_more": more, "first_id": ids[0], "last_id": ids[-1]}
        )

    upstream = Upstream(page(["claude-a", "claude-b"], True), page(["claude-c"], False))
    assert await claude(upstream).models() == [
        ("claude-a", None),
        ("claude-b", None),
        ("claude-c", None),
    ]
    assert upstream.requests[1].url.params["after_id"] == "claude-b"


async def test_openai_models() -> None:
    data = [
        {"id": "gpt-x", "object": "model", "created": 1, "owned_by": "me"},
        {"id": "local", "object": "model", "created": 1, "owned_by": "me", "size": 1234},
    ]
    upstream = Upstream(httpx2.Response(200, json={"object": "list", "data": data}))
    assert await gpt(upstream).models() == [("gpt-x", None), ("local", 1234)]
    assert upstream.requests[0].url == "http://gpt.local/v1/models"


@pytest.mark.parametrize(
    ("status", "error"), [(401, TargetUnauthorized), (404, TargetStatus), (529, TargetBusy)]
)
async def test_models_errors(status: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        await claude(Upstream(anthropic_error(status, "e", "no"))).models()


# --- helpers ----------------------------------------------------------------------------


def test_created_at_is_gos_rfc3339_nano() -> None:
    assert created_at(1_735_787_045_123_456_789) == "2025-01-02T03:04:05.123456789Z"
    assert created_at(1_735_787_045_120_000_000) == "2025-01-02T03:04:05.12Z"
    assert created_at(1_735_787_045_000_000_000) == "2025-01-02T03:04:05Z"


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff\xdb", "image/jpeg"),
        (b"GIF89a", "image/gif"),
        (b"RIFF\x10\0\0\0WEBPVP8 ", "image/webp"),
        (b"BM", "application/octet-stream"),
    ],
)
def test_media_type_is_sniffed(head: bytes, kind: str) -> None:
    assert media_type(base64.b64encode(head + b"\0" * 16).decode()) == kind
