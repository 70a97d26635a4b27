"""Property test of the request path: whatever a client sends, on any face (Ollama's
``/api/``, OpenAI's and Anthropic's ``/v1/``), the target never runs two chats at once
and foreman never answers 500.

Generated request lines (path spellings: dot segments, percent-encoding, doubled and
trailing slashes, case; methods) and bodies (Go accepts things Python does not:
trailing data, deep nesting, invalid UTF-8, field names in any case) go concurrently
through foreman's ASGI app to the stand-in, in batches.
"""

from __future__ import annotations

import json

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreman.standins.ollama import StandIn

from .asgi import Answer, call
from .conftest import open_foreman

ROUTES = (
    ["/api/chat"] * 4
    + ["/api/generate"] * 2
    + [
        "/api/embed",
        "/api/embeddings",
        "/api/tags",
        "/api/show",
        "/api/version",
        "/",
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/llama3.2",
        "/healthz",
    ]
)


def _encode_one(text: str, i: int, upper: bool) -> str:
    code = f"%{ord(text[i]):02X}" if upper else f"%{ord(text[i]):02x}"
    return text[:i] + code + text[i + 1 :]


@st.composite
def spellings(draw: st.DrawFn) -> bytes:
    """One of Ollama's paths, spelled as a client (or an attacker) might."""
    path = draw(st.sampled_from(ROUTES))
    kind = draw(st.sampled_from(["as is"] * 4 + ["case", "encode", "slash", "dots", "double"]))
    if kind == "case":
        path = draw(st.sampled_from([path.upper(), path.title(), path.swapcase()]))
    elif kind == "encode" and len(path) > 1:  # %-encode one character, a slash included
        i = draw(st.integers(1, len(path) - 1))
        path = _encode_one(path, i, draw(st.booleans()))
    elif kind == "slash":
        path += "/"
    elif kind == "dots":
        dots = draw(st.sampled_from(["/.", "/x/..", "/%2e", "/%2E%2e/api", "/./"]))
        i = path.find("/", 1)
        path = path + dots if i < 0 else path[:i] + dots + path[i:]
    elif kind == "double":
        path = path.replace("/", "//", 1 + draw(st.integers(0, 1)))
    if draw(st.integers(0, 5)) == 0:
        path += "?stream=true"
    return path.encode()


def _chat(**fields: object) -> dict[str, object]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], **fields}


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    base = draw(
        st.sampled_from(
            [
                _chat(),
                _chat(),
                _chat(stream=False),
                _chat(stream=False),
                {"model": "llama3.2", "prompt": "hi"},
                _chat(max_tokens=5),  # Anthropic's face wants max_tokens
                _chat(max_tokens=5, stream=True),
                {"model": "llama3.2", "input": "hi", "stream": True},  # responses
                {"model": "nomic-embed-text", "input": "hi"},
                {"model": "llama3.2"},
                {"messages": [{"role": "user", "content": "hi"}]},
            ]
        )
    )
    body = json.dumps(base).encode()
    mutation = draw(st.integers(-6, 7))  # mostly left as is
    if mutation == 1:
        body += draw(st.sampled_from([b"x", b"}", b'{"model":"qwen3:8b"}', b"\n\n", b"\x00"]))
    elif mutation == 2:
        depth = draw(st.integers(900, 12000))
        body = body[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    elif mutation == 3:
        body = body.replace(b'"model"', draw(st.sampled_from([b'"MODEL"', b'"Model"'])))
    elif mutation == 4:
        body = body.replace(b'"hi"', b'"h\xff\xfei"')
    elif mutation == 5:
        body = body[: draw(st.integers(0, len(body)))]
    elif mutation == 6:
        body = b" \t\r\n" + body
    elif mutation == 7:
        body = body[:-1] + b',"model":"llama3.2:latest"}'  # duplicate key: the last one wins
    return body


requests = st.tuples(
    st.sampled_from(["POST"] * 8 + ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"]),
    spellings(),
    bodies(),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(requests, min_size=2, max_size=8))
async def test_no_request_gets_around_the_gate_or_a_500(
    batch: list[tuple[str, bytes, bytes]],
) -> None:
    standin = StandIn(token_rate=2000.0, reply_tokens=3, embed_delay=0.0)
    answers: dict[int, Answer] = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, open_foreman(nursery, standin) as fm:

            async def send(i: int, method: str, raw_path: bytes, body: bytes) -> None:
                answers[i] = await call(fm.app, method, raw_path, body=body)

            async with trio.open_nursery() as requests_nursery:
                for i, (method, raw_path, body) in enumerate(batch):
                    requests_nursery.start_soon(send, i, method, raw_path, body)
            nursery.cancel_scope.cancel()
    assert standin.max_chats_in_flight <= 1
    for i, request in enumerate(batch):
        assert answers[i].complete, request
        assert answers[i].status != 500, (answers[i], request)
