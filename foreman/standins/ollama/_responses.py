"""Ollama's ``POST /v1/responses`` (``openai/responses.go``, ``ResponsesMiddleware``).

The request becomes a native chat (``instructions`` a system message first, ``input``
a string or a list of messages); ``stream`` defaults to false. A stream is
``event: NAME\\ndata: {json}\\n\\n`` events (Go maps: keys sorted), each with a
``sequence_number``: ``response.created``, ``response.in_progress``, reasoning
events for a thinking model, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta`` per token, then
``...text.done``, ``...content_part.done``, ``...output_item.done`` and
``response.completed`` with the usage. No ``[DONE]``.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from quart import Response

from ._compat import (
    NO_CACHE,
    go_marshal,
    new_error,
    openai_text,
    request_body,
    run_writer,
    unix,
    usage,
)

if TYPE_CHECKING:
    from ._standin import StandIn

__all__ = ["responses"]


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": str(body["instructions"])})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for item in given:
            if isinstance(item, dict) and item.get("type", "message") == "message":
                role = "system" if item.get("role") == "developer" else item.get("role", "user")
                messages.append({"role": role, "content": openai_text(item.get("content"))})
    return messages


class _Converter:
    """``ResponsesStreamConverter`` for text and thinking (no tool calls)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.request = body
        self.response_id = f"resp_{random.randrange(999999)}"
        self.item_id = f"msg_{random.randrange(999999)}"
        self.sequence = self.output_index = 0
        self.first = True
        self.text = self.thinking = ""
        self.content_started = self.reasoning_started = False
        self.reasoning_id = ""
        self.completed_items: list[dict[str, Any]] = []

    def _event(self, name: str, data: dict[str, Any]) -> bytes:
        data = {**data, "type": name, "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + name.encode() + b"\ndata: " + go_marshal(data) + b"\n\n"

    def _response(self, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
        req = self.request
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": int(time.time()),
            "completed_at": None,
            "status": status,
            "incomplete_details": None,
            "model": req.get("model", ""),
            "previous_response_id": None,
            "instructions": req.get("instructions") or None,
            "output": output,
            "error": None,
            "tools": [],
            "tool_choice": "auto",
            "truncation": req.get("truncation") or "disabled",
            "parallel_tool_calls": True,
            "text": {"format": {"type": "text"}},
            "top_p": _go_float(req.get("top_p")),
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": _go_float(req.get("temperature")),
            "reasoning": None,
            "usage": usage,
            "max_output_tokens": req.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": bool(req.get("background")),
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    def _message(self, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part],
        }

    def _finish_reasoning(self) -> bytes:
        if not self.reasoning_started:
            return b""
        item = {
            "id": self.reasoning_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": self.thinking}],
            "encrypted_content": self.thinking,
        }
        self.completed_items.append(item)
        index = self.output_index
        self.output_index += 1
        self.reasoning_started = False
        done = {"item_id": item["id"], "output_index": index, "summary_index": 0}
        return self._event(
            "response.reasoning_summary_text.done", {**done, "text": self.thinking}
        ) + self._event("response.output_item.done", {"output_index": index, "item": item})

    def event(self, line: dict[str, Any]) -> bytes:
        out = b""
        if self.first:
            self.first = False
            for name in ("response.created", "response.in_progress"):
                out += self._event(name, {"response": self._response("in_progress", [], None)})
        message = line.get("message") or {}
        thinking, content = message.get("thinking", ""), message.get("content", "")
        if thinking:
            if not self.reasoning_started:
                self.reasoning_started = True
                self.reasoning_id = f"rs_{random.randrange(999999)}"
                item = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
                out += self._event(
                    "response.output_item.added", {"output_index": self.output_index, "item": item}
                )
            self.thinking += thinking
            out += self._event(
                "response.reasoning_summary_text.delta",
                {
                    "item_id": self.reasoning_id,
                    "output_index": self.output_index,
                    "summary_index": 0,
                    "delta": thinking,
                },
            )
        if content:
            out += self._finish_reasoning()
            where = {"item_id": self.item_id, "output_index": self.output_index}
            if not self.content_started:
                self.content_started = True
                added = {**self._message("in_progress"), "content": []}
                out += self._event(
                    "response.output_item.added", {"output_index": self.output_index, "item": added}
                )
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out += self._event(
                    "response.content_part.added", {**where, "content_index": 0, "part": part}
                )
            self.text += content
            out += self._event(
                "response.output_text.delta",
                {**where, "content_index": 0, "delta": content, "logprobs": []},
            )
        if line.get("done") is True:
            out += self._completion(line)
        return out

    def _completion(self, line: dict[str, Any]) -> bytes:
        out = self._finish_reasoning()
        output = list(self.completed_items)
        if self.content_started:
            where = {"item_id": self.item_id, "output_index": self.output_index}
            item = self._message("completed")
            out += self._event(
                "response.output_text.done",
                {**where, "content_index": 0, "text": self.text, "logprobs": []},
            )
            out += self._event(
                "response.content_part.done",
                {**where, "content_index": 0, "part": item["content"][0]},
            )
            out += self._event(
                "response.output_item.done", {"output_index": self.output_index, "item": item}
            )
            output.append(item)
        response = self._response("completed", output, _usage(line))
        response["completed_at"] = int(time.time())
        return out + self._event("response.completed", {"response": response})

    def whole(self, final: dict[str, Any]) -> dict[str, Any]:
        """``ToResponse`` (struct order) with ``completed_at`` set."""
        message = final.get("message") or {}
        output: list[dict[str, Any]] = []
        if message.get("thinking"):
            output.append(
                {
                    "id": f"rs_{self.response_id}",
                    "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": message["thinking"]}],
                    "encrypted_content": message["thinking"],
                }
            )
        self.text = message.get("content", "")
        output.append(self._message("completed"))
        response = self._response("completed", output, _usage(final))
        response["created_at"] = unix(final.get("created_at"))
        response["completed_at"] = int(time.time())
        response["reasoning"] = None
        return response


def _go_float(value: Any) -> Any:
    """A float64 that defaults to 1.0, as Go writes it (``1``, not ``1.0``)."""
    value = 1.0 if value is None else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _usage(line: dict[str, Any]) -> dict[str, Any]:
    return {
        **usage(line, "input_tokens", "output_tokens"),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


async def responses(standin: StandIn) -> Response:
    """``ResponsesMiddleware`` + ChatHandler."""
    body = await request_body()
    native: dict[str, Any] = {
        "model": body.get("model") or "",
        "messages": _messages(body),
        "stream": body.get("stream") is True,
    }
    if body.get("max_output_tokens") is not None:
        native["options"] = {"num_predict": body["max_output_tokens"]}
    if body.get("tools"):
        native["tools"] = body["tools"]
    converter = _Converter(body)
    return await run_writer(
        "chat",
        native,
        standin=standin,
        error=new_error,
        writer=converter,
        headers=NO_CACHE,
    )
