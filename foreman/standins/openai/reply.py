"""The OpenAI stand-in's reply: what it says, as one object or as streamed events."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..cloud import cut, random_id, sample_value, words
from .validation import SYSTEM_FINGERPRINT

# --- the reply ----------------------------------------------------------------------------


def _texts(message: dict[str, Any]) -> Iterator[str]:
    content = message.get("content")
    if isinstance(content, str):
        yield content
    for part in content if isinstance(content, list) else []:
        if part.get("type") == "text":
            yield part["text"]
    for call in message.get("tool_calls") or []:
        yield call["function"]["arguments"]


def prompt_tokens(body: dict[str, Any]) -> int:
    """Words of every message's text, plus 1 per image part."""
    count = 0
    for message in body["messages"]:
        count += sum(words(t) for t in _texts(message))
        parts = message["content"] if isinstance(message.get("content"), list) else []
        count += sum(1 for p in parts if p.get("type") == "image_url")
    return count


@dataclass
class Plan:
    """The whole reply to one request, before it is rendered as a completion or a stream."""

    content: list[str]  # content deltas
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    call_id: str = ""
    call_name: str = ""
    arguments: list[str] | None = None  # argument deltas of the one tool call, if any

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


def _tool_to_call(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t["function"] for t in body.get("tools") or []]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        return next(t for t in tools if t["name"] == choice["function"]["name"])
    if choice == "required":
        return tools[0]
    last = body["messages"][-1]
    said = " ".join(_texts(last)) if last["role"] == "user" else ""
    return tools[0] if "weather" in said.lower() else None


def plan(body: dict[str, Any], reply: str, tool_preamble: str) -> Plan:
    """What to answer to a validated request (see the module docstring)."""
    tokens = prompt_tokens(body)
    tool = _tool_to_call(body)
    if tool is not None:
        text = json.dumps(sample_value(tool.get("parameters")), separators=(",", ":"))
        preamble = re.findall(r"\s*\S+", tool_preamble)
        arguments = [text[i : i + 6] for i in range(0, len(text), 6)]
        return Plan(
            preamble,
            "tool_calls",
            tokens,
            len(preamble) + len(arguments),
            call_id=random_id("call_", 24),
            call_name=tool["name"],
            arguments=arguments,
        )
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or math.inf
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    out: list[str] = []
    for piece in re.findall(r"\s*\S+", reply) or [reply]:
        if len(out) == limit:
            return Plan(out, "length", tokens, len(out))
        out.append(piece)
        text = "".join(out)
        hits = [text.find(s) for s in stops if s and s in text]
        if hits:
            return Plan(cut(out, min(hits)), "stop", tokens, len(out))
    return Plan(out, "stop", tokens, len(out))


def _tool_call(plan: Plan) -> dict[str, Any]:
    return {
        "id": plan.call_id,
        "type": "function",
        "function": {"name": plan.call_name, "arguments": "".join(plan.arguments or [])},
    }


def completion(plan: Plan, model: str, completion_id: str, created: int) -> dict[str, Any]:
    """The non-streamed ``chat.completion`` object."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(plan.content) or (None if plan.arguments is not None else ""),
        "refusal": None,
        "annotations": [],
    }
    if plan.arguments is not None:
        message["tool_calls"] = [_tool_call(plan)]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
        ],
        "usage": plan.usage(),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def chunks(
    plan: Plan, model: str, completion_id: str, created: int, *, include_usage: bool
) -> Iterator[tuple[bool, dict[str, Any]]]:
    """The stream's chunks, each with whether it is a delta (the ``delay`` applies)."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            out["usage"] = None
        return out

    if plan.content or plan.arguments is None:
        yield False, chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in plan.content:
            yield True, chunk({"content": piece})
    if plan.arguments is not None:
        head = {"index": 0, **_tool_call(plan)}
        head["function"] = {"name": plan.call_name, "arguments": ""}
        opening: dict[str, Any] = {"tool_calls": [head]}
        if not plan.content:
            opening = {"role": "assistant", "content": None, **opening, "refusal": None}
        yield False, chunk(opening)
        for piece in plan.arguments:
            yield True, chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield False, chunk({}, plan.finish_reason)
    if include_usage:
        last = chunk({})
        last.update(choices=[], usage=plan.usage())
        yield False, last


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = [(seed[i % len(seed)] - 127.5) / 127.5 + i * 1e-3 for i in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]
