"""Ollama's OpenAI face (``openai/openai.go``, ``openai/responses.go``, ``middleware/openai.go``).

``POST /v1/chat/completions`` (ChatHandler), ``/v1/completions`` (GenerateHandler),
``/v1/embeddings`` (EmbedHandler), ``/v1/responses`` (ChatHandler), ``GET /v1/models``
(ListHandler) and ``/v1/models/{model}`` (ShowHandler), each a rewrite of the native
request and answer. Errors are ``{"error": {"message", "type", "param", "code"}}``
with ``type`` ``invalid_request_error`` (400), ``not_found_error`` (404) or
``api_error``. Streams are ``data: {json}\\n\\n`` events ending ``data: [DONE]``
(chat, completions) or ``event: NAME\\ndata: {json}\\n\\n`` (responses, no ``[DONE]``).

A stream whose runner dies (the native ``{"error": ...}`` line, status 200) ends as
Ollama's writers end it: chat and completions send one empty chunk (``model`` "") and
stop without ``[DONE]``; responses send nothing more.
"""

from __future__ import annotations

import base64
import random
import struct
import time
from typing import TYPE_CHECKING, Any

from quart import Response

from ._compat import (
    JSON_PLAIN,
    abort,
    guarded,
    new_error,
    openai_text,
    request_body,
    run_native,
    run_writer,
    unix,
    usage,
)
from ._models import parse_name
from ._responses import responses
from ._wire import dumps

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ._standin import StandIn

__all__ = ["new_error", "register_openai"]

_FP = "fp_ollama"


def _options(body: dict[str, Any], tokens_key: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, native in (
        (tokens_key, "num_predict"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("stop", "stop"),
    ):
        if body.get(key) is not None:
            options[native] = body[key]
    return options


def _native(body: dict[str, Any], name: str, value: Any, extra: str) -> dict[str, Any]:
    """The native request of a chat (``name`` "messages", ``extra`` "tools") or a
    completion ("prompt", "suffix"): the model, ``value``, the stream flag, the options
    and the body's ``extra`` field if it is set, in that order."""
    native = {
        "model": body.get("model") or "",
        name: value,
        "stream": body.get("stream") is True,
        "options": _options(body, "max_tokens"),
    }
    if body.get(extra):
        native[extra] = body[extra]
    return native


def _usage(line: dict[str, Any]) -> dict[str, Any]:
    return usage(line, "prompt_tokens", "completion_tokens")


class _Writer:
    """What both writers of ``/v1/chat/completions`` and ``/v1/completions`` keep: their
    id (``PREFIX`` and a number under 999, as Ollama's) and ``stream_options.include_usage``."""

    PREFIX = ""

    def __init__(self, body: dict[str, Any]) -> None:
        self.id = f"{self.PREFIX}{random.randrange(999)}"
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))


class _ChatWriter(_Writer):
    """``ChatWriter``: native chat lines to ``chat.completion.chunk`` events."""

    PREFIX = "chatcmpl-"

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.created: int | None = None
        self.first_sent = self.tool_call_sent = False

    def _chunk(self, line: dict[str, Any], choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": line.get("model", ""),
            "system_fingerprint": _FP,
            "choices": [choice],
        }

    def event(self, line: dict[str, Any]) -> bytes:
        if self.created is None:
            self.created = unix(line.get("created_at")) if line.get("created_at") else None
            if self.created is None:
                self.created = int(time.time())
        message = line.get("message") or {}
        content, thinking = message.get("content", ""), message.get("thinking", "")
        out = b""
        done = line.get("done") is True
        if not (done and self.first_sent and not content and not thinking):
            delta: dict[str, Any] = {} if self.first_sent else {"role": "assistant"}
            delta["content"] = content
            if thinking:
                delta["reasoning"] = thinking
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            out += b"data: " + dumps(self._chunk(line, choice)) + b"\n\n"
            self.first_sent = True
        if done:
            reason = line.get("done_reason") or "stop"
            finish = self._chunk(line, {"index": 0, "delta": {}, "finish_reason": reason})
            out += b"data: " + dumps(finish) + b"\n\n"
            if self.include_usage:
                finish = {**finish, "choices": [], "usage": _usage(line)}
                out += b"data: " + dumps(finish) + b"\n\n"
            out += b"data: [DONE]\n\n"
        return out

    def whole(self, final: dict[str, Any]) -> dict[str, Any]:
        message = final.get("message") or {}
        answer: dict[str, Any] = {"role": message.get("role", "")}
        answer["content"] = message.get("content", "")
        if message.get("thinking"):
            answer["reasoning"] = message["thinking"]
        reason = final.get("done_reason") or None
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": unix(final.get("created_at")),
            "model": final.get("model", ""),
            "system_fingerprint": _FP,
            "choices": [{"index": 0, "message": answer, "finish_reason": reason}],
            "usage": _usage(final),
        }


class _CompleteWriter(_Writer):
    """``CompleteWriter``: native generate lines to ``text_completion`` events."""

    PREFIX = "cmpl-"

    def _chunk(self, line: dict[str, Any], created: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": created,
            "choices": [
                {
                    "text": line.get("response", ""),
                    "index": 0,
                    "finish_reason": line.get("done_reason") or None,
                }
            ],
            "model": line.get("model", ""),
            "system_fingerprint": _FP,
        }

    def event(self, line: dict[str, Any]) -> bytes:
        chunk = self._chunk(line, int(time.time()))
        if self.include_usage:
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        out = b"data: " + dumps(chunk) + b"\n\n"
        if line.get("done") is True:
            if self.include_usage:
                chunk = {**chunk, "choices": [], "usage": _usage(line)}
                out += b"data: " + dumps(chunk) + b"\n\n"
            out += b"data: [DONE]\n\n"
        return out

    def whole(self, final: dict[str, Any]) -> dict[str, Any]:
        chunk = self._chunk(final, unix(final.get("created_at")))
        choices = chunk.pop("choices")
        chunk.pop("model"), chunk.pop("system_fingerprint")
        return {
            **chunk,
            "model": final.get("model", ""),
            "system_fingerprint": _FP,
            "choices": choices,
            "usage": _usage(final),
        }


async def chat_completions(standin: StandIn) -> Response:
    """``ChatMiddleware`` + ChatHandler."""
    body = await request_body()
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not messages:
        return abort(new_error, 400, "[] is too short - 'messages'")
    said = [
        {"role": m.get("role", ""), "content": openai_text(m.get("content"))}
        for m in messages
        if isinstance(m, dict)
    ]
    native = _native(body, "messages", said, "tools")
    writer = _ChatWriter(body)
    return await run_writer("chat", native, standin=standin, error=new_error, writer=writer)


async def completions(standin: StandIn) -> Response:
    """``CompletionsMiddleware`` + GenerateHandler."""
    body = await request_body()
    prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    native = _native(body, "prompt", prompt, "suffix")
    writer = _CompleteWriter(body)
    return await run_writer("generate", native, standin=standin, error=new_error, writer=writer)


async def embeddings(standin: StandIn) -> Response:
    """``EmbeddingsMiddleware`` + EmbedHandler."""
    body = await request_body()
    encoding = body.get("encoding_format") or ""
    if encoding and encoding.lower() not in ("float", "base64"):
        return abort(
            new_error,
            400,
            f"Invalid value for 'encoding_format' = {encoding}. "
            "Supported values: ['float', 'base64'].",
        )
    inputs = body.get("input")
    if inputs == "":
        inputs = [""]
    if inputs is None or inputs == []:
        return abort(new_error, 400, "invalid input")
    model = body.get("model") or ""
    native: dict[str, Any] = {"model": model, "input": inputs}
    if body.get("dimensions"):
        native["dimensions"] = body["dimensions"]

    def whole(answer: dict[str, Any]) -> dict[str, Any]:
        vectors = answer.get("embeddings")
        if vectors is None:
            return {"object": "", "data": None, "model": "", "usage": _tokens(0)}
        data = [
            {"object": "embedding", "embedding": _encoded(v, encoding), "index": i}
            for i, v in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data or None,
            "model": model,
            "usage": _tokens(answer.get("prompt_eval_count", 0)),
        }

    return await run_native(
        "embed", native, standin=standin, error=new_error, stream=None, whole=whole
    )


def _tokens(count: int) -> dict[str, int]:
    return {"prompt_tokens": count, "total_tokens": count}


def _encoded(vector: list[float], encoding: str) -> Any:
    if encoding.lower() != "base64":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _owner(name: str) -> str:
    parsed = parse_name(name)
    return parsed.namespace if parsed is not None else ""


async def list_models(standin: StandIn) -> Response:
    """``ListMiddleware`` + ListHandler: ``{"object": "list", "data": [model, ...]}``."""
    specs = sorted(standin.models.values(), key=lambda s: s.modified_at, reverse=True)
    data = [
        {
            "id": spec.parsed.display,
            "object": "model",
            "created": spec.modified_at // 1_000_000_000,
            "owned_by": _owner(spec.parsed.display),
        }
        for spec in specs
    ]
    body = {"object": "list", "data": data or None}
    return Response(dumps(body) + b"\n", 200, content_type=JSON_PLAIN)


async def retrieve_model(standin: StandIn, model: str) -> Response:
    """``RetrieveMiddleware`` + ShowHandler: ``{"id", "object", "created", "owned_by"}``."""

    def whole(shown: dict[str, Any]) -> dict[str, Any]:
        spec = standin.find(model)
        created = spec.modified_at // 1_000_000_000 if spec is not None else 0
        return {"id": model, "object": "model", "created": created, "owned_by": _owner(model)}

    return await run_native(
        "show", {"name": model}, standin=standin, error=new_error, stream=None, whole=whole
    )


def register_openai(app: QuartTrio, standin: StandIn) -> None:
    """Add Ollama's OpenAI routes to ``app``."""

    @app.route("/v1/chat/completions", methods=["POST"])
    async def v1_chat() -> Response:
        return await guarded(chat_completions(standin), new_error)

    @app.route("/v1/completions", methods=["POST"])
    async def v1_completions() -> Response:
        return await guarded(completions(standin), new_error)

    @app.route("/v1/embeddings", methods=["POST"])
    async def v1_embeddings() -> Response:
        return await guarded(embeddings(standin), new_error)

    @app.route("/v1/models", methods=["GET"])
    async def v1_models() -> Response:
        return await list_models(standin)

    @app.route("/v1/models/<model>", methods=["GET"])
    async def v1_model(model: str) -> Response:
        return await retrieve_model(standin, model)

    @app.route("/v1/responses", methods=["POST"])
    async def v1_responses() -> Response:
        return await guarded(responses(standin), new_error)
