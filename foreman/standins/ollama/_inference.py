"""``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings`` and ``/api/show``.

Validation order, status codes and texts follow Ollama's handlers (reference
§3.5–3.9, §6): decode (``keep_alive`` and ``think`` included) -> model required ->
valid name -> known model -> unload call -> thinking/capabilities -> schedule
(load) -> load call -> generate. A request holds a model reference from
scheduling until its response ends, and the model's one slot while generating.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final, Literal

import trio
from quart import Response, request

from ._generation import THINKING, ConnectionAborted, Plan, embed, lines, normalise, reply_words
from ._generation import token_ids as _token_ids
from ._http import abort_connection, error, json_response, lease
from ._models import ModelSpec, parse_name
from ._wire import NDJSON, RequestError, decode_body, dumps, go_quote, nanos, parse_keep_alive

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ._scheduler import Runner
    from ._standin import StandIn

__all__ = ["embed_handler", "infer", "register_inference", "show_handler"]

_COMMON: Final = {"model": "string", "options": "map[string]interface {}"}
_CHAT: Final = {**_COMMON, "messages": "[]api.Message", "stream": "bool", "tools": "api.Tools"}
_GENERATE: Final = {
    **_COMMON,
    "prompt": "string",
    "suffix": "string",
    "system": "string",
    "stream": "bool",
    "raw": "bool",
    "context": "[]int",
}
_EMBED: Final = {**_COMMON, "truncate": "bool", "dimensions": "int"}
_EMBEDDINGS: Final = {**_COMMON, "prompt": "string"}
_SHOW: Final = {"model": "string", "name": "string", "verbose": "bool", "system": "string"}


class _NDJSONBody:
    """A response body of NDJSON lines, one ASGI body message per line."""

    def __init__(self, lines: AsyncGenerator[dict[str, Any], None]) -> None:
        self._lines = lines

    def __aiter__(self) -> _NDJSONBody:
        return self

    async def __anext__(self) -> bytes:
        return dumps(await self._lines.__anext__()) + b"\n"

    async def aclose(self) -> None:
        await self._lines.aclose()


def _find(standin: StandIn, model: str, not_found: str) -> ModelSpec:
    if parse_name(model) is None:
        raise RequestError(400, "invalid model name")
    spec = standin.find(model)
    if spec is None:
        raise RequestError(404, not_found)
    return spec


def _think(body: dict[str, Any]) -> bool | str | None:
    """``think`` as ``api.ThinkValue`` decodes it."""
    value = body.get("think")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in ("high", "medium", "low", "max"):
            return value
        raise RequestError(
            400,
            f"invalid think value: {go_quote(value)} "
            '(must be "high", "medium", "low", "max", true, or false)',
        )
    raise RequestError(400, "think must be a boolean or string")


def _num_predict(body: dict[str, Any]) -> int | None:
    value = (body.get("options") or {}).get("num_predict")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(500, 'option "num_predict" must be of type integer')
    return None if value < 0 else int(value)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages") or []
    for message in messages:
        if not isinstance(message, dict):
            kind = "string" if isinstance(message, str) else "number"
            raise RequestError(
                400,
                f"json: cannot unmarshal {kind} into Go struct field "
                "ChatRequest.messages of type api.Message",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise RequestError(
                400,
                "json: cannot unmarshal number into Go struct field "
                "Message.messages.content of type string",
            )
    return messages


async def _schedule(standin: StandIn, spec: ModelSpec, keep_alive: float | None) -> Runner:
    """Attach this request to a loaded runner; released when the request ends."""
    runner = await standin.scheduler.acquire(spec, keep_alive)
    lease().add(lambda: standin.scheduler.release(runner))
    return runner


async def _hold_slot(runner: Runner) -> None:
    await runner.slot.acquire()
    lease().add(runner.slot.release)


async def infer(
    standin: StandIn,
    kind: Literal["chat", "generate"],
    raw: bytes | None = None,
    wrap: Callable[[AsyncGenerator[dict[str, Any], None]], Response] | None = None,
) -> Response:
    """Ollama's ChatHandler/GenerateHandler. ``raw`` replaces the request body (what a
    compatibility middleware rewrote it to); ``wrap`` turns a stream's lines into the
    response (default: NDJSON)."""
    started = trio.current_time()
    lease().add(standin.track("chats"))
    go_type = "ChatRequest" if kind == "chat" else "GenerateRequest"
    if raw is None:
        raw = await request.get_data()
    body = decode_body(raw, go_type, _CHAT if kind == "chat" else _GENERATE)
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    think = _think(body)
    messages = _messages(body) if kind == "chat" else []
    top_logprobs = body.get("top_logprobs")
    if isinstance(top_logprobs, int) and not 0 <= top_logprobs <= 20:
        raise RequestError(400, "top_logprobs must be between 0 and 20")
    model = body.get("model") or ""
    if not model:
        raise (
            RequestError(400, "model is required")
            if kind == "chat"
            else RequestError(404, "model '' not found")
        )
    spec = _find(standin, model, f"model '{model}' not found")
    prompt = body.get("prompt") or ""
    empty = not messages if kind == "chat" else not prompt
    standin.prompts[((messages[-1].get("content") or "") if messages else prompt)[:100]] += 1
    head = {"model": model, "created_at": standin.timestamp()}
    nothing = (
        {"message": {"role": "assistant", "content": ""}} if kind == "chat" else {"response": ""}
    )
    if empty and keep_alive == 0:
        standin.scheduler.unload(spec)
        return json_response({**head, **nothing, "done": True, "done_reason": "unload"})
    thinking = "thinking" in spec.capabilities
    if not thinking and think not in (None, False):
        raise RequestError(400, f"{go_quote(model)} does not support thinking")
    if "completion" not in spec.capabilities:
        raise RequestError(400, f"{go_quote(model)} does not support {kind}")
    if body.get("tools") and "tools" not in spec.capabilities:
        raise RequestError(400, f"{spec.parsed.full} does not support tools")
    if body.get("suffix") and "insert" not in spec.capabilities:
        raise RequestError(400, f"{spec.parsed.full} does not support insert")
    num_predict = _num_predict(body)

    runner = await _schedule(standin, spec, keep_alive)
    if empty:
        head["created_at"] = standin.timestamp()  # after the load, as Ollama stamps it
        return json_response({**head, **nothing, "done": True, "done_reason": "load"})
    loaded = trio.current_time()
    await _hold_slot(runner)

    if kind == "chat":
        users = [m.get("content") or "" for m in messages if str(m.get("role")).lower() == "user"]
        text = users[-1] if users else ""
        prompt_count = sum(len((m.get("content") or "").split()) + 4 for m in messages)
    else:
        text = prompt
        prompt_count = len(f"{body.get('system') or ''} {prompt}".split()) + 4
    tokens = [("thinking", t) for t in THINKING] if thinking and think is not False else []
    tokens += [("content", w) for w in reply_words(text, standin.reply_tokens)]
    standin.replies.append("".join(t for k, t in tokens if k == "content")[:200])
    done_reason = "stop"
    if num_predict is not None and num_predict < len(tokens):
        tokens, done_reason = tokens[:num_predict], "length"
    plan = Plan(
        kind,
        model,
        tokens,
        done_reason,
        prompt_count,
        started,
        loaded,
        context=(
            _token_ids(prompt + " " + "".join(t for k, t in tokens if k == "content"))
            if kind == "generate"
            else None
        ),
        stamp=standin.timestamp,
    )
    streaming = body.get("stream") is not False
    produced = lines(
        plan,
        token_rate=standin.token_rate,
        faults=lambda: standin.faults,
        thawed=standin.wait_thawed,
        # a stream's request ends with its body; a single object is sent after this
        on_close=lease().close if streaming else lambda: None,
    )
    if streaming:
        if wrap is not None:
            return wrap(produced)
        return Response(_NDJSONBody(produced), 200, content_type=NDJSON)
    final: dict[str, Any] = {}
    try:
        async with aclosing(produced) as each:
            async for line in each:
                if "error" in line:
                    return error(500, line["error"])
                final = line
    except ConnectionAborted:
        return abort_connection()
    return json_response(plan.merged(final))


def _inputs(body: dict[str, Any]) -> list[str]:
    value = body.get("input")
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise RequestError(400, "invalid input type")
        return value
    if value is not None:
        raise RequestError(400, "invalid input type")
    return []


async def embed_handler(standin: StandIn, legacy: bool, raw: bytes | None = None) -> Response:
    """Ollama's EmbedHandler (``legacy``: EmbeddingsHandler); ``raw`` replaces the body."""
    started = trio.current_time()
    lease().add(standin.track("embeds"))
    go_type = "EmbeddingRequest" if legacy else "EmbedRequest"
    if raw is None:
        raw = await request.get_data()
    body = decode_body(raw, go_type, _EMBEDDINGS if legacy else _EMBED)
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    inputs = [body.get("prompt") or ""] if legacy else _inputs(body)
    inputs = [text for text in inputs if text or not legacy]
    model = body.get("model") or ""
    if not model:
        raise (
            RequestError(400, "model is required")
            if legacy
            else RequestError(404, "model '' not found")
        )
    spec = _find(standin, model, f"model {go_quote(model)} not found, try pulling it first")
    runner = await _schedule(standin, spec, keep_alive)
    if not inputs:
        return json_response({"embedding": []} if legacy else {"model": model, "embeddings": []})
    loaded = trio.current_time()
    await _hold_slot(runner)
    await trio.sleep(standin.embed_delay * len(inputs))
    if legacy:
        return json_response({"embedding": embed(inputs[0], spec.vector_length, normalise=False)})
    vectors = [embed(text, spec.vector_length) for text in inputs]
    dimensions = body.get("dimensions")
    if isinstance(dimensions, int | float) and 0 < dimensions < spec.vector_length:
        vectors = [normalise(vector[: int(dimensions)]) for vector in vectors]
    return json_response(
        {
            "model": model,
            "embeddings": vectors,
            "total_duration": max(1, nanos(trio.current_time() - started)),
            "load_duration": max(1, nanos(loaded - started)),
            "prompt_eval_count": sum(len(text.split()) or 1 for text in inputs),
        }
    )


async def show_handler(standin: StandIn, raw: bytes | None = None) -> Response:
    """Ollama's ShowHandler; ``raw`` replaces the body."""
    if raw is None:
        raw = await request.get_data()
    body = decode_body(raw, "ShowRequest", _SHOW)
    model = body.get("model") or body.get("name") or ""
    if not model:
        raise RequestError(400, "model is required")
    parsed = parse_name(model)
    if parsed is None:
        raise RequestError(400, "invalid model name")
    spec = _find(standin, model, f"model '{parsed.display}' not found")
    return json_response(spec.show())


def register_inference(app: QuartTrio, standin: StandIn) -> None:
    """Add the model routes to ``app``; :class:`RequestError` becomes ``{"error": ...}``."""

    @app.errorhandler(RequestError)
    async def request_error(exc: RequestError) -> Response:
        return error(exc.status, exc.message)

    @app.route("/api/chat", methods=["POST"])
    async def chat() -> Response:
        return await infer(standin, "chat")

    @app.route("/api/generate", methods=["POST"])
    async def generate() -> Response:
        return await infer(standin, "generate")

    @app.route("/api/embed", methods=["POST"])
    async def embed_() -> Response:
        return await embed_handler(standin, legacy=False)

    @app.route("/api/embeddings", methods=["POST"])
    async def embeddings() -> Response:
        return await embed_handler(standin, legacy=True)

    @app.route("/api/show", methods=["POST"])
    async def show() -> Response:
        return await show_handler(standin)
