"""Ollama's Anthropic face: ``POST /v1/messages`` (``anthropic/``, ``middleware/anthropic.go``).

The request (``model``, ``max_tokens`` > 0, ``messages``, optional ``system``,
``tools``, ``stream``) becomes a native chat: ``system`` a system message first,
each message's text blocks concatenated, ``max_tokens`` as ``num_predict``. Errors are
``{"type": "error", "error": {"type", "message"}, "request_id"}`` with ``type`` from
the status (``invalid_request_error`` 400, ``authentication_error`` 401,
``permission_error`` 403, ``not_found_error`` 404, ``rate_limit_error`` 429,
``overloaded_error`` 503/529, else ``api_error``). A stream is
``event: NAME\\ndata: {json}\\n\\n``: ``message_start`` (input tokens estimated as
Ollama does, characters / 4), a ``content_block_start``/``_delta``/``_stop`` run per
block (thinking, then text), ``message_delta`` (stop reason, usage), ``message_stop``.
A runner that dies mid-stream (the native ``{"error": ...}`` line at status 200) adds
no event: the stream just ends, as Ollama's ``StreamConverter`` ends it.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from quart import Response

from ._compat import NO_CACHE, abort, guarded, request_body, run_writer, text_of
from ._wire import dumps

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ._standin import StandIn

__all__ = ["new_error", "register_anthropic"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def new_error(status: int, message: str) -> dict[str, Any]:
    """``anthropic.NewError``."""
    return {
        "type": "error",
        "error": {"type": _TYPES.get(status, "api_error"), "message": message},
        "request_id": f"req_{secrets.token_hex(12)}",
    }


_text = text_of


def _length(content: Any) -> int:
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        return sum(len(_text([block]).encode()) for block in content)
    return 0


def _estimate(body: dict[str, Any]) -> int:
    """``EstimateInputTokens``: characters of system, roles, text and tools, over 4."""
    total = _length(body.get("system"))
    for message in body.get("messages") or []:
        total += len(str(message.get("role", ""))) + _length(message.get("content"))
    for tool in body.get("tools") or []:
        schema = json.dumps(tool.get("input_schema"), separators=(",", ":"))
        total += len(tool.get("name", "")) + len(tool.get("description", "")) + len(schema)
    return max(total // 4, 1)


def _stop_reason(reason: str) -> str:
    return {"stop": "end_turn", "length": "max_tokens", "": ""}.get(reason, "stop_sequence")


class _Converter:
    """``StreamConverter`` for thinking and text blocks."""

    def __init__(self, model: str, estimate: int) -> None:
        self.id = f"msg_{secrets.token_hex(12)}"
        self.model, self.estimate = model, estimate
        self.first = True
        self.index = 0
        self.thinking_started = self.thinking_done = self.text_started = False

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"

    def _stop(self) -> bytes:
        stop = {"type": "content_block_stop", "index": self.index}
        return self._event("content_block_stop", stop)

    def _start(self, block: dict[str, Any]) -> bytes:
        return self._event(
            "content_block_start",
            {"type": "content_block_start", "index": self.index, "content_block": block},
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return self._event("content_block_delta", event)

    def event(self, line: dict[str, Any]) -> bytes:
        out = b""
        if self.first:
            self.first = False
            tokens = line.get("prompt_eval_count") or self.estimate
            message = {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "usage": {"input_tokens": tokens, "output_tokens": 0},
            }
            out += self._event("message_start", {"type": "message_start", "message": message})
        message = line.get("message") or {}
        thinking, content = message.get("thinking", ""), message.get("content", "")
        if thinking and not self.thinking_done:
            if not self.thinking_started:
                self.thinking_started = True
                out += self._start({"type": "thinking", "thinking": ""})
            out += self._delta({"type": "thinking_delta", "thinking": thinking})
        if content:
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                out += self._stop()
                self.index += 1
            if not self.text_started:
                self.text_started = True
                out += self._start({"type": "text", "text": ""})
            out += self._delta({"type": "text_delta", "text": content})
        if line.get("done") is True:
            if self.text_started or (self.thinking_started and not self.thinking_done):
                out += self._stop()
            delta: dict[str, Any] = {}
            if _stop_reason(line.get("done_reason", "")):
                delta["stop_reason"] = _stop_reason(line.get("done_reason", ""))
            usage = {
                "input_tokens": line.get("prompt_eval_count", 0),
                "output_tokens": line.get("eval_count", 0),
            }
            final = {"type": "message_delta", "delta": delta, "usage": usage}
            out += self._event("message_delta", final)
            out += self._event("message_stop", {"type": "message_stop"})
        return out

    def whole(self, final: dict[str, Any]) -> dict[str, Any]:
        """``ToMessagesResponse``."""
        message = final.get("message") or {}
        content = []
        if message.get("thinking"):
            content.append({"type": "thinking", "thinking": message["thinking"]})
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        answer: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": final.get("model", ""),
            "content": content or None,
        }
        if _stop_reason(final.get("done_reason", "")):
            answer["stop_reason"] = _stop_reason(final.get("done_reason", ""))
        answer["usage"] = {
            "input_tokens": final.get("prompt_eval_count", 0),
            "output_tokens": final.get("eval_count", 0),
        }
        return answer


def _native(body: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    system = _text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            role = str(message.get("role", "")).lower()
            messages.append({"role": role, "content": _text(message.get("content"))})
    native: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "options": {"num_predict": body["max_tokens"]},
        "stream": body.get("stream") is True,
    }
    tools = [
        {
            "type": "function",
            "function": {
                "name": tool.get("name", ""),
                "description": tool.get("description", ""),
                "parameters": tool.get("input_schema") or {},
            },
        }
        for tool in body.get("tools") or []
        if isinstance(tool, dict)
    ]
    if tools:
        native["tools"] = tools
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
        native["think"] = thinking["type"] == "enabled"
    return native


async def messages(standin: StandIn) -> Response:
    """``AnthropicMessagesMiddleware`` + ChatHandler."""
    body = await request_body()
    if not body.get("model"):
        return abort(new_error, 400, "model is required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        return abort(new_error, 400, "max_tokens is required and must be positive")
    if not body.get("messages"):
        return abort(new_error, 400, "messages is required")
    native = _native(body)
    converter = _Converter(body["model"], _estimate(body))
    return await run_writer(
        "chat", native, standin=standin, error=new_error, writer=converter, headers=NO_CACHE
    )


def register_anthropic(app: QuartTrio, standin: StandIn) -> None:
    """Add Ollama's Anthropic route to ``app``."""

    @app.route("/v1/messages", methods=["POST"])
    async def v1_messages() -> Response:
        return await guarded(messages(standin), new_error)
