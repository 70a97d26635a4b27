"""The Anthropic and OpenAI stand-ins, driven by the official ``anthropic`` and ``openai`` SDKs.

Each stand-in runs in-process behind :class:`~foreman.standins.ollama.ASGIStreamTransport`
(the SDKs take an ``httpx2.AsyncClient`` as ``http_client``), except the two socket
tests, which serve it with hypercorn on port 0 and use the default clock.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import trio
import trio.testing

from foreman.standins import anthropic as standin_anthropic
from foreman.standins import openai as standin_openai
from foreman.standins.anthropic import AnthropicStandIn
from foreman.standins.openai import OpenAIStandIn

# openai's AsyncStream stops reading at ``data: [DONE]`` and leaves its inner async
# generators unfinished, which trio reports (when they are collected) as a ResourceWarning.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Async generator 'openai\\._streaming\\.:ResourceWarning"
)

CLAUDE = "claude-sonnet-4-6"  # the SDK warns about -4-5: DeprecationWarning
GPT = "gpt-4o-mini"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 16).decode()
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather at a place.",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
        },
        "required": ["location", "unit"],
    },
}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --- Anthropic ----------------------------------------------------------------------------


@pytest.fixture
def claude_standin() -> AnthropicStandIn:
    return AnthropicStandIn()


@pytest.fixture
async def claude(
    nursery: trio.Nursery, claude_standin: AnthropicStandIn
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        api_key="sk-test",
        base_url="http://standin",
        http_client=httpx2.AsyncClient(transport=claude_standin.transport(nursery)),
        max_retries=0,
    ) as client:
        yield client


@pytest.fixture
async def claude_http(
    nursery: trio.Nursery, claude_standin: AnthropicStandIn
) -> AsyncIterator[httpx2.AsyncClient]:
    """A plain client to the stand-in, for what the SDK would not send."""
    async with httpx2.AsyncClient(
        transport=claude_standin.transport(nursery),
        base_url="http://standin",
        headers={"x-api-key": "sk-test", "anthropic-version": "2023-06-01"},
    ) as client:
        yield client


async def test_claude_stream_matches_message(
    claude: anthropic.AsyncAnthropic, claude_standin: AnthropicStandIn
) -> None:
    whole = await claude.messages.create(model=CLAUDE, max_tokens=100, messages=user("hi there"))
    assert whole.id.startswith("msg_01") and whole.model == CLAUDE
    assert whole.stop_reason == "end_turn" and whole.stop_sequence is None
    assert [b.type for b in whole.content] == ["text"]
    text = whole.content[0].text
    assert text == claude_standin.reply
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (2, len(text.split()))

    async with claude.messages.stream(
        model=CLAUDE, max_tokens=100, messages=user("hi there")
    ) as stream:
        deltas = [delta async for delta in stream.text_stream]
        final = await stream.get_final_message()
    assert len(deltas) == len(text.split()) > 1 and "".join(deltas) == text
    assert final.content[0].text == text and final.usage == whole.usage
    assert final.stop_reason == "end_turn"
    assert claude_standin.streams_total == 1 and claude_standin.generations_total == 2


async def test_claude_raw_events_in_order(claude_http: httpx2.AsyncClient) -> None:
    body = {"model": CLAUDE, "max_tokens": 3, "stream": True, "messages": user("hi")}
    response = await claude_http.post("/v1/messages", json=body)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["request-id"].startswith("req_")
    frames = response.text.split("\n\n")
    assert frames[-1] == ""
    names = []
    for frame in frames[:-1]:
        event, data = frame.split("\n")
        name = event.removeprefix("event: ")
        assert json.loads(data.removeprefix("data: "))["type"] == name
        names.append(name)
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = json.loads(frames[0].split("data: ")[1])["message"]
    assert start["content"] == [] and start["usage"]["output_tokens"] == 1
    delta = json.loads(frames[-3].split("data: ")[1])
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": 3}


async def test_claude_records_system_and_images(
    claude: anthropic.AsyncAnthropic, claude_standin: AnthropicStandIn
) -> None:
    image = {"type": "base64", "media_type": "image/png", "data": PNG}
    reply = await claude.messages.create(
        model=CLAUDE,
        max_tokens=50,
        system="Be brief and kind.",
        stop_sequences=["never"],
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": image},
                    {"type": "text", "text": "what is this?"},
                ],
            },
        ],
    )
    assert reply.usage.input_tokens == 4 + 1 + 1 + 1 + 3  # system, texts, the image
    seen = claude_standin.requests[-1]
    assert (seen["method"], seen["path"]) == ("POST", "/v1/messages")
    assert seen["headers"]["authorization"] == "Bearer sk-test"  # what the SDK sends
    body = claude_standin.last_body
    assert body["system"] == "Be brief and kind." and body["stop_sequences"] == ["never"]
    assert body["messages"][2]["content"][0]["source"] == image
    tokens = await claude.messages.count_tokens(model=CLAUDE, messages=user("one two three"))
    assert tokens.input_tokens == 3


async def test_claude_sampling_parameters_depend_on_the_api_version(
    claude: anthropic.AsyncAnthropic, claude_http: httpx2.AsyncClient
) -> None:
    # The SDK sends anthropic-version 2026-10-21 and has no temperature argument any more.
    with pytest.raises(anthropic.BadRequestError) as caught:
        await claude.messages.create(
            model=CLAUDE, max_tokens=5, messages=user("hi"), extra_body={"temperature": 1.0}
        )
    assert caught.value.api_message == "temperature: Extra inputs are not permitted"
    old = {"model": CLAUDE, "max_tokens": 5, "messages": user("hi"), "temperature": 0.5}
    response = await claude_http.post("/v1/messages", json={**old, "top_k": 40})
    assert response.status_code == 200  # claude_http sends anthropic-version 2023-06-01


async def test_claude_authentication(
    nursery: trio.Nursery, claude_standin: AnthropicStandIn, claude_http: httpx2.AsyncClient
) -> None:
    async with anthropic.AsyncAnthropic(
        api_key="sk-wrong",
        base_url="http://standin",
        http_client=httpx2.AsyncClient(transport=claude_standin.transport(nursery)),
        max_retries=0,
    ) as wrong:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await wrong.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"))
    error = caught.value
    assert error.status_code == 401 and error.request_id is not None
    assert error.type == "authentication_error" and error.api_message == "invalid x-api-key"
    assert error.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": error.request_id,
    }
    assert claude_standin.in_flight == claude_standin.generations_total == 0
    ok = await claude_http.get("/v1/models")  # x-api-key works too
    assert ok.status_code == 200
    missing = await claude_http.get("/v1/models", headers={"x-api-key": ""})
    assert missing.status_code == 401
    bare = await claude_http.get("/v1/models", headers={"anthropic-version": ""})
    assert bare.json()["error"]["message"] == "anthropic-version: header is required"


async def test_claude_overloaded_and_rate_limited(
    claude: anthropic.AsyncAnthropic, claude_standin: AnthropicStandIn
) -> None:
    claude_standin.overloaded = 2
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError) as caught:
            await claude.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"))
        assert caught.value.status_code == 529 and caught.value.type == "overloaded_error"
    assert isinstance(caught.value, anthropic.InternalServerError)
    await claude.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"))
    claude_standin.rate_limited = 1
    with pytest.raises(anthropic.RateLimitError) as limited:
        await claude.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"))
    assert limited.value.response.headers["retry-after"] == "1"
    assert claude_standin.errors == {"overloaded_error": 2, "rate_limit_error": 1}


async def test_claude_models(claude: anthropic.AsyncAnthropic) -> None:
    page = await claude.models.list()
    assert [m.id for m in page.data] == list(standin_anthropic.DEFAULT_MODELS)
    assert page.data[0].display_name == "Claude Sonnet 4.6" and page.data[0].type == "model"
    assert (page.first_id, page.last_id, page.has_more) == (
        "claude-sonnet-4-6",
        "claude-sonnet-4-5",
        False,
    )
    ids = [m.id async for m in await claude.models.list(limit=1)]  # pages through after_id
    assert ids == list(standin_anthropic.DEFAULT_MODELS)
    assert (await claude.models.retrieve("claude-opus-4-6")).display_name == "Claude Opus 4.6"
    with pytest.raises(anthropic.NotFoundError) as caught:
        await claude.messages.create(model="claude-nope", max_tokens=10, messages=user("hi"))
    assert caught.value.type == "not_found_error"
    assert caught.value.api_message == "model: claude-nope"


async def test_claude_validation(claude_http: httpx2.AsyncClient) -> None:
    async def error(**body: Any) -> str:
        response = await claude_http.post("/v1/messages", json=body)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        return response.json()["error"]["message"]

    hi = user("hi")
    assert await error(model=CLAUDE, messages=hi) == "max_tokens: Field required"
    assert await error(model=CLAUDE, max_tokens=5, messages=[]) == (
        "messages: at least one message is required"
    )
    assert "top-level `system` parameter" in await error(
        model=CLAUDE, max_tokens=5, messages=[{"role": "system", "content": "x"}, *hi]
    )
    assert await error(model=CLAUDE, max_tokens=5, messages=hi, options={}) == (
        "options: Extra inputs are not permitted"
    )
    assert await error(model=CLAUDE, max_tokens=5, messages=hi, temperature=1.5) == (
        "temperature: Input should be less than or equal to 1"
    )
    empty = [{"role": "assistant", "content": ""}, *hi]
    assert "must have non-empty content" in await error(model=CLAUDE, max_tokens=5, messages=empty)
    jpeg_as_png = {"type": "base64", "media_type": "image/png", "data": JPEG}
    image = [{"role": "user", "content": [{"type": "image", "source": jpeg_as_png}]}]
    assert await error(model=CLAUDE, max_tokens=5, messages=image) == (
        "messages.0.content.0.image.source.base64.data: Image does not match the provided "
        "media type image/png"
    )
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    unanswered = [*hi, {"role": "assistant", "content": [call]}, *hi]
    assert "`tool_use` ids were found without `tool_result`" in await error(
        model=CLAUDE, max_tokens=5, messages=unanswered, tools=[WEATHER_TOOL]
    )
    stray = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]}]
    assert "unexpected `tool_use_id`" in await error(model=CLAUDE, max_tokens=5, messages=stray)


async def test_claude_tool_use(
    claude: anthropic.AsyncAnthropic, claude_standin: AnthropicStandIn
) -> None:
    ask = user("What is the weather in Paris?")
    whole = await claude.messages.create(
        model=CLAUDE, max_tokens=100, tools=[WEATHER_TOOL], messages=ask
    )
    assert whole.stop_reason == "tool_use"
    [call] = whole.content
    assert call.type == "tool_use" and call.id.startswith("toolu_01")
    assert (call.name, call.input) == ("get_weather", {"location": "Paris", "unit": "celsius"})

    claude_standin.tool_preamble = "Let me check."
    async with claude.messages.stream(
        model=CLAUDE, max_tokens=100, tools=[WEATHER_TOOL], messages=ask
    ) as stream:
        partials = [
            event.delta.partial_json
            async for event in stream
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
        ]
        final = await stream.get_final_message()
    assert len(partials) > 2 and partials[0] == ""
    assert json.loads("".join(partials)) == call.input
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Let me check." and final.content[1].input == call.input
    assert final.stop_reason == "tool_use"

    answered = [
        *ask,
        {"role": "assistant", "content": [b.model_dump() for b in final.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": final.content[1].id, "content": "9C"}
            ],
        },
    ]
    after = await claude.messages.create(
        model=CLAUDE, max_tokens=100, tools=[WEATHER_TOOL], messages=answered
    )
    assert after.stop_reason == "end_turn" and after.content[0].text == claude_standin.reply
    forced = await claude.messages.create(
        model=CLAUDE,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        messages=user("hi"),
    )
    assert forced.stop_reason == "tool_use"


async def test_claude_stop_sequences_and_max_tokens(claude: anthropic.AsyncAnthropic) -> None:
    stopped = await claude.messages.create(
        model=CLAUDE, max_tokens=100, stop_sequences=["nope", "stand-in"], messages=user("hi")
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "stand-in"
    assert stopped.content[0].text == "Hello! This is the Claude "
    async with claude.messages.stream(
        model=CLAUDE, max_tokens=100, stop_sequences=["stand-in"], messages=user("hi")
    ) as stream:
        assert "".join([d async for d in stream.text_stream]) == "Hello! This is the Claude "
        assert (await stream.get_final_message()).stop_sequence == "stand-in"
    spanning = await claude.messages.create(
        model=CLAUDE, max_tokens=100, stop_sequences=["is the"], messages=user("hi")
    )
    assert spanning.content[0].text == "Hello! This "  # cut inside an earlier word
    assert spanning.usage.output_tokens == 4  # words generated up to the stop sequence
    at_once = await claude.messages.create(
        model=CLAUDE, max_tokens=100, stop_sequences=["Hello"], messages=user("hi")
    )
    assert at_once.content == [] and at_once.usage.output_tokens == 1
    cut = await claude.messages.create(model=CLAUDE, max_tokens=2, messages=user("hi"))
    assert cut.stop_reason == "max_tokens" and cut.content[0].text == "Hello! This"
    assert cut.usage.output_tokens == 2


async def test_claude_broken_streams(
    claude: anthropic.AsyncAnthropic, claude_standin: AnthropicStandIn
) -> None:
    claude_standin.die_after = 4
    seen = []
    with pytest.raises(httpx2.RemoteProtocolError):  # the SDK does not wrap it
        async with claude.messages.stream(model=CLAUDE, max_tokens=50, messages=user("hi")) as s:
            async for text in s.text_stream:
                seen.append(text)
    assert seen == ["Hello!"]  # message_start, block start, ping, one delta
    with pytest.raises(anthropic.APIConnectionError):
        await claude.messages.create(model=CLAUDE, max_tokens=50, messages=user("hi"))

    claude_standin.die_after = None
    claude_standin.fail_midstream = True
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with claude.messages.stream(model=CLAUDE, max_tokens=50, messages=user("hi")) as s:
            async for _ in s.text_stream:
                pass
    # In-stream errors carry the stream's HTTP status (200), so no OverloadedError.
    assert type(caught.value) is anthropic.APIStatusError and caught.value.status_code == 200
    assert caught.value.type == "overloaded_error"
    assert claude_standin.in_flight == 0


async def test_claude_delay_and_concurrency(
    autojump_clock: trio.testing.MockClock,
    claude: anthropic.AsyncAnthropic,
    claude_standin: AnthropicStandIn,
) -> None:
    claude_standin.delay = 0.5
    words = len(claude_standin.reply.split())
    arrivals: list[float] = []

    async def one() -> None:
        async with claude.messages.stream(model=CLAUDE, max_tokens=50, messages=user("a")) as s:
            async for _ in s.text_stream:
                arrivals.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        nursery.start_soon(one)
    assert trio.current_time() - start == pytest.approx(0.5 * words, abs=0.1)
    assert claude_standin.max_in_flight == 2 and claude_standin.in_flight == 0
    assert len(arrivals) == 2 * words

    start = trio.current_time()
    await claude.messages.create(model=CLAUDE, max_tokens=2, messages=user("a"))
    assert trio.current_time() - start == pytest.approx(1.0, abs=0.1)


async def test_claude_client_going_away_ends_the_generation(
    autojump_clock: trio.testing.MockClock,
    claude: anthropic.AsyncAnthropic,
    claude_standin: AnthropicStandIn,
) -> None:
    claude_standin.delay = 10.0
    async with claude.messages.stream(model=CLAUDE, max_tokens=50, messages=user("a")) as s:
        async for _ in s.text_stream:
            break
    await trio.testing.wait_all_tasks_blocked()
    assert claude_standin.in_flight == 0
    with trio.move_on_after(5):  # a non-streamed reply would take 10 s a word
        await claude.messages.create(model=CLAUDE, max_tokens=50, messages=user("a"))
    await trio.testing.wait_all_tasks_blocked()
    assert claude_standin.in_flight == 0 and claude_standin.max_in_flight == 1


async def test_claude_control_endpoints(
    claude_http: httpx2.AsyncClient,
    claude: anthropic.AsyncAnthropic,
    claude_standin: AnthropicStandIn,
) -> None:
    set_faults = await claude_http.post("/_standin/faults", json={"overloaded": 1, "delay": 0})
    assert set_faults.status_code == 200 and set_faults.json()["faults"]["overloaded"] == 1
    assert claude_standin.overloaded == 1
    bad = await claude_http.post("/_standin/faults", json={"explode": True})
    assert bad.status_code == 400
    with pytest.raises(anthropic.OverloadedError):
        await claude.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"))
    stats = (await claude_http.get("/_standin/stats")).json()
    assert stats["counts"] == {"POST /v1/messages": 1} and stats["errors"] == {
        "overloaded_error": 1
    }
    assert stats["requests"][0]["body"]["messages"] == user("hi")
    await claude_http.post("/_standin/reset")
    assert claude_standin.requests == [] and claude_standin.generations_total == 0


async def test_claude_on_a_socket(nursery: trio.Nursery) -> None:
    standin = AnthropicStandIn(reply="one two three")
    stop = trio.Event()
    with trio.fail_after(5):
        urls: list[str] = await nursery.start(
            partial(standin_anthropic.serve, standin, shutdown_trigger=stop.wait)
        )
        assert urls[0].startswith("http://127.0.0.1:")
        async with anthropic.AsyncAnthropic(
            api_key="sk-test", base_url=urls[0], max_retries=0
        ) as client:
            async with client.messages.stream(
                model=CLAUDE, max_tokens=10, messages=user("hi")
            ) as stream:
                assert [d async for d in stream.text_stream] == ["one", " two", " three"]
            standin.die_after = 3
            with pytest.raises(httpx2.RemoteProtocolError):
                async with client.messages.stream(
                    model=CLAUDE, max_tokens=10, messages=user("hi")
                ) as stream:
                    async for _ in stream.text_stream:
                        pass
        stop.set()


# --- OpenAI -------------------------------------------------------------------------------


@pytest.fixture
def gpt_standin() -> OpenAIStandIn:
    return OpenAIStandIn()


@pytest.fixture
async def gpt(
    nursery: trio.Nursery, gpt_standin: OpenAIStandIn
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        api_key="sk-test",
        base_url="http://standin/v1",
        http_client=httpx2.AsyncClient(transport=gpt_standin.transport(nursery)),
        max_retries=0,
    ) as client:
        yield client


async def test_gpt_stream_matches_completion(
    gpt: openai.AsyncOpenAI, gpt_standin: OpenAIStandIn
) -> None:
    whole = await gpt.chat.completions.create(
        model=GPT,
        messages=[{"role": "system", "content": "Be brief."}, *user("hi there")],
    )
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")
    [choice] = whole.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    text = choice.message.content
    assert text == gpt_standin.reply and choice.message.tool_calls is None
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (4, len(text.split()))
    assert whole.usage.total_tokens == 4 + len(text.split())

    stream = await gpt.chat.completions.create(
        model=GPT,
        messages=[{"role": "system", "content": "Be brief."}, *user("hi there")],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    deltas = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert len(deltas) > 1 and "".join(deltas) == text
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert gpt_standin.last_body["stream_options"] == {"include_usage": True}

    plain = await gpt.chat.completions.create(model=GPT, messages=user("hi"), stream=True)
    assert [c.choices[-1].finish_reason async for c in plain][-1] == "stop"


async def test_gpt_raw_stream_ends_with_done(
    nursery: trio.Nursery, gpt_standin: OpenAIStandIn
) -> None:
    async with httpx2.AsyncClient(
        transport=gpt_standin.transport(nursery),
        base_url="http://standin",
        headers={"authorization": "Bearer sk-test"},
    ) as client:
        body = {"model": GPT, "messages": user("hi"), "stream": True, "max_tokens": 2}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    lines = response.text.split("\n\n")
    assert lines[-2:] == ["data: [DONE]", ""]
    finish = json.loads(lines[-3].removeprefix("data: "))
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert "usage" not in finish


async def test_gpt_authentication(nursery: trio.Nursery, gpt_standin: OpenAIStandIn) -> None:
    async with openai.AsyncOpenAI(
        api_key="sk-wrong-key-123456",
        base_url="http://standin/v1",
        http_client=httpx2.AsyncClient(transport=gpt_standin.transport(nursery)),
        max_retries=0,
    ) as wrong:
        with pytest.raises(openai.AuthenticationError) as caught:
            await wrong.chat.completions.create(model=GPT, messages=user("hi"))
    error = caught.value
    assert error.status_code == 401 and error.code == "invalid_api_key"
    assert error.type == "invalid_request_error" and error.param is None
    assert error.message.startswith("Error code: 401")
    assert isinstance(error.body, dict)  # the SDK keeps the "error" object as the body
    assert error.body["message"].startswith("Incorrect API key provided: sk-***")
    assert error.response.headers["x-request-id"].startswith("req_")
    assert gpt_standin.requests[-1]["headers"]["authorization"] == "Bearer sk-wrong-key-123456"


async def test_gpt_overloaded_and_rate_limited(
    gpt: openai.AsyncOpenAI, gpt_standin: OpenAIStandIn
) -> None:
    gpt_standin.overloaded = 1
    with pytest.raises(openai.InternalServerError) as caught:
        await gpt.chat.completions.create(model=GPT, messages=user("hi"))
    assert caught.value.status_code == 503 and caught.value.type == "server_error"
    gpt_standin.rate_limited = 1
    with pytest.raises(openai.RateLimitError) as limited:
        await gpt.chat.completions.create(model=GPT, messages=user("hi"))
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"
    await gpt.chat.completions.create(model=GPT, messages=user("hi"))
    assert gpt_standin.errors == {"server_error": 1, "rate_limit_exceeded": 1}


async def test_gpt_models(gpt: openai.AsyncOpenAI) -> None:
    models = [m async for m in gpt.models.list()]
    assert [m.id for m in models] == list(standin_openai.DEFAULT_MODELS)
    assert models[0].object == "model" and models[0].owned_by == "system"
    assert (await gpt.models.retrieve("gpt-4.1")).id == "gpt-4.1"
    with pytest.raises(openai.NotFoundError) as caught:
        await gpt.chat.completions.create(model="gpt-nope", messages=user("hi"))
    assert caught.value.code == "model_not_found"
    assert caught.value.message == (
        "Error code: 404 - The model `gpt-nope` does not exist or you do not have access to it."
    )
    assert caught.value.body == {
        "message": "The model `gpt-nope` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


async def test_gpt_tool_calls(gpt: openai.AsyncOpenAI, gpt_standin: OpenAIStandIn) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": WEATHER_TOOL["name"],
                "description": WEATHER_TOOL["description"],
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    ask = user("How is the WEATHER in Paris?")
    whole = await gpt.chat.completions.create(model=GPT, messages=ask, tools=tools)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris", "unit": "celsius"}

    stream = await gpt.chat.completions.create(model=GPT, messages=ask, tools=tools, stream=True)
    chunks = [c async for c in stream]
    head = chunks[0].choices[0].delta
    assert head.role == "assistant" and head.content is None
    [opening] = head.tool_calls or []
    assert (opening.index, opening.type, opening.function.name) == (0, "function", "get_weather")
    assert opening.id and opening.function.arguments == ""
    pieces = [(c.choices[0].delta.tool_calls or [])[0].function.arguments for c in chunks[1:-1]]
    assert len(pieces) > 2 and json.loads("".join(pieces)) == json.loads(call.function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    answered: Any = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "9C"},
    ]
    after = await gpt.chat.completions.create(model=GPT, messages=answered, tools=tools)
    assert after.choices[0].message.content == gpt_standin.reply
    forced = await gpt.chat.completions.create(
        model=GPT, messages=user("hi"), tools=tools, tool_choice="required"
    )
    assert forced.choices[0].finish_reason == "tool_calls"


async def test_gpt_stop_and_length(gpt: openai.AsyncOpenAI) -> None:
    stopped = await gpt.chat.completions.create(model=GPT, messages=user("hi"), stop="stand-in")
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == "Hello! This is the OpenAI "
    stream = await gpt.chat.completions.create(
        model=GPT, messages=user("hi"), stop=["x", "stand-in"], stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == (
        "Hello! This is the OpenAI "
    )
    spanning = await gpt.chat.completions.create(model=GPT, messages=user("hi"), stop="is the")
    assert spanning.choices[0].message.content == "Hello! This "
    cut = await gpt.chat.completions.create(model=GPT, messages=user("hi"), max_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.usage is not None
    assert (cut.choices[0].message.content, cut.usage.completion_tokens) == ("Hello! This is", 3)
    newer = await gpt.chat.completions.create(
        model=GPT, messages=user("hi"), max_completion_tokens=1
    )
    assert newer.choices[0].message.content == "Hello!"


async def test_gpt_validation(gpt: openai.AsyncOpenAI, gpt_standin: OpenAIStandIn) -> None:
    async def error(**kwargs: Any) -> openai.BadRequestError:
        with pytest.raises(openai.BadRequestError) as caught:
            await gpt.chat.completions.create(model=GPT, **kwargs)
        assert caught.value.type == "invalid_request_error"
        return caught.value

    assert (await error(messages=[])).code == "empty_array"
    stray = await error(
        messages=[*user("hi"), {"role": "tool", "tool_call_id": "c", "content": "x"}]
    )
    assert "must be a response to a preceeding message with 'tool_calls'" in str(stray.body)
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {}}}
    as_object = await error(messages=[*user("hi"), {"role": "assistant", "tool_calls": [call]}])
    assert as_object.code == "invalid_type"
    assert as_object.param == "messages[1].tool_calls[0].function.arguments"
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    in_system = await error(messages=[{"role": "system", "content": [image]}, *user("hi")])
    assert "only allowed for messages with role 'user'" in str(in_system.body)
    await gpt.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": [image, {"type": "text", "text": "?"}]}]
    )
    assert gpt_standin.last_body["messages"][0]["content"][0] == image
    not_image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}
    bad_image = await error(messages=[{"role": "user", "content": [not_image]}])
    assert bad_image.code == "invalid_image_format"
    unknown = await error(messages=user("hi"), extra_body={"keep_alive": "5m"})
    assert unknown.message == "Error code: 400 - Unrecognized request argument supplied: keep_alive"
    assert (await error(messages=user("hi"), temperature=2.5)).code == "decimal_above_max_value"


async def test_gpt_broken_streams(gpt: openai.AsyncOpenAI, gpt_standin: OpenAIStandIn) -> None:
    gpt_standin.die_after = 2
    seen = []
    with pytest.raises(openai.APIConnectionError):
        stream = await gpt.chat.completions.create(model=GPT, messages=user("hi"), stream=True)
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "Hello!"]
    with pytest.raises(openai.APIConnectionError):
        await gpt.chat.completions.create(model=GPT, messages=user("hi"))

    gpt_standin.die_after = None
    gpt_standin.fail_midstream = True
    with pytest.raises(openai.APIError) as caught:
        stream = await gpt.chat.completions.create(model=GPT, messages=user("hi"), stream=True)
        async for _ in stream:
            pass
    assert type(caught.value) is openai.APIError and caught.value.type == "server_error"
    assert gpt_standin.in_flight == 0


async def test_gpt_embeddings(gpt: openai.AsyncOpenAI) -> None:
    result = await gpt.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == 3
    again = await gpt.embeddings.create(
        model="text-embedding-3-small", input="a b", encoding_format="base64", dimensions=8
    )
    packed = base64.b64decode(again.data[0].embedding)  # type: ignore[arg-type]
    assert len(packed) == 32
    with pytest.raises(openai.NotFoundError):
        await gpt.chat.completions.create(model="text-embedding-3-small", messages=user("hi"))


async def test_gpt_on_a_socket(nursery: trio.Nursery) -> None:
    standin = OpenAIStandIn(reply="one two three")
    stop = trio.Event()
    with trio.fail_after(5):
        urls: list[str] = await nursery.start(
            partial(standin_openai.serve, standin, shutdown_trigger=stop.wait)
        )
        async with openai.AsyncOpenAI(
            api_key="sk-test", base_url=urls[0] + "/v1", max_retries=0
        ) as client:
            stream = await client.chat.completions.create(
                model=GPT, messages=user("hi"), stream=True
            )
            assert [c.choices[0].delta.content async for c in stream] == [
                "",
                "one",
                " two",
                " three",
                None,
            ]
        async with httpx2.AsyncClient(base_url=urls[0]) as control:
            await control.post("/_standin/faults", json={"overloaded": 1})
            async with openai.AsyncOpenAI(
                api_key="sk-test", base_url=urls[0] + "/v1", max_retries=1
            ) as client:
                retried = await client.chat.completions.create(model=GPT, messages=user("hi"))
            assert retried.choices[0].message.content == "one two three"
            stats = (await control.get("/_standin/stats")).json()
        assert stats["generations_total"] == 3 and stats["errors"] == {"server_error": 1}
        stop.set()
