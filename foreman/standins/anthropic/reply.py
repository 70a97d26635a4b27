"""The Anthropic stand-in's reply: what it says, as one object or as streamed events."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..cloud import cut, random_id, sample_value, words

# --- the reply ----------------------------------------------------------------------------


def _texts(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
        return
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            yield block.get("text", "")
        elif block.get("type") == "tool_use":
            yield json.dumps(block.get("input"))
        elif block.get("type") == "tool_result":
            yield from _texts(block.get("content"))


def input_tokens(body: dict[str, Any]) -> int:
    """Words of the system text and of every text in the messages, plus 1 per image."""
    count = sum(words(t) for t in _texts(body.get("system")))
    for message in body["messages"]:
        count += sum(words(t) for t in _texts(message["content"]))
        blocks = message["content"] if isinstance(message["content"], list) else []
        for block in blocks:
            inner = block.get("content") if block.get("type") == "tool_result" else None
            nested = inner if isinstance(inner, list) else []
            count += sum(1 for b in [block, *nested] if b.get("type") == "image")
    return count


@dataclass
class Block:
    """One content block of a reply and the deltas that stream it."""

    type: str  # "text" or "tool_use"
    pieces: list[str]
    id: str = ""
    name: str = ""
    input: Any = None

    def content(self) -> dict[str, Any]:
        if self.type == "text":
            return {"type": "text", "text": "".join(self.pieces)}
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": self.input}


@dataclass
class Plan:
    """The whole reply to one request, before it is rendered as a Message or a stream."""

    blocks: list[Block]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int


def _text(reply: str, max_tokens: int, stops: list[str]) -> tuple[list[str], int, str, str | None]:
    """The text deltas, the words generated, the stop reason and the stop sequence hit."""
    out: list[str] = []
    for piece in re.findall(r"\s*\S+", reply) or [reply]:
        if len(out) == max_tokens:
            return out, len(out), "max_tokens", None
        out.append(piece)
        text = "".join(out)
        hits = [(text.find(s), s) for s in stops if s in text]
        if hits:
            at, stop = min(hits)
            return cut(out, at), len(out), "stop_sequence", stop
    return out, len(out), "end_turn", None


def _tool_to_call(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t for t in body.get("tools") or [] if t.get("type") in (None, "custom")]
    choice = (body.get("tool_choice") or {}).get("type", "auto")
    if not tools or choice == "none":
        return None
    if choice == "tool":
        return next(t for t in tools if t["name"] == body["tool_choice"]["name"])
    if choice == "any":
        return tools[0]
    last = body["messages"][-1]
    said = " ".join(_texts(last["content"])) if last["role"] == "user" else ""
    return tools[0] if "weather" in said.lower() else None


def plan(body: dict[str, Any], reply: str, tool_preamble: str) -> Plan:
    """What to answer to a validated request (see the module docstring)."""
    tokens = input_tokens(body)
    tool = _tool_to_call(body)
    if tool is None:
        pieces, generated, stop_reason, stop = _text(
            reply, body["max_tokens"], body.get("stop_sequences") or []
        )
        blocks = [Block("text", pieces)] if pieces else []
        return Plan(blocks, stop_reason, stop, tokens, generated)
    blocks = []
    if tool_preamble:
        blocks.append(Block("text", re.findall(r"\s*\S+", tool_preamble)))
    arguments = sample_value(tool["input_schema"])
    text = json.dumps(arguments)
    blocks.append(
        Block(
            "tool_use",
            [text[i : i + 6] for i in range(0, len(text), 6)],
            id=random_id("toolu_01"),
            name=tool["name"],
            input=arguments,
        )
    )
    return Plan(blocks, "tool_use", None, tokens, sum(len(b.pieces) for b in blocks))


def _usage(input_count: int, output_count: int) -> dict[str, Any]:
    return {
        "input_tokens": input_count,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_count,
    }


def message(plan: Plan, model: str, message_id: str) -> dict[str, Any]:
    """The non-streamed Message object."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [b.content() for b in plan.blocks],
        "stop_reason": plan.stop_reason,
        "stop_sequence": plan.stop_sequence,
        "usage": _usage(plan.input_tokens, plan.output_tokens),
    }


def events(plan: Plan, model: str, message_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The stream's ``(event name, data)`` pairs, in the real API's order."""
    start = message(plan, model, message_id)
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = _usage(plan.input_tokens, 1)
    yield "message_start", {"type": "message_start", "message": start}
    for index, block in enumerate(plan.blocks):
        opening = block.content()
        if block.type == "text":
            opening["text"] = ""
        else:
            opening["input"] = {}
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opening},
        )
        if index == 0:
            yield "ping", {"type": "ping"}
        if block.type == "text":
            deltas = [{"type": "text_delta", "text": p} for p in block.pieces]
        else:
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *block.pieces]]
        for delta in deltas:
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    if not plan.blocks:
        yield "ping", {"type": "ping"}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": plan.stop_reason, "stop_sequence": plan.stop_sequence},
            "usage": {"output_tokens": plan.output_tokens},
        },
    )
    yield "message_stop", {"type": "message_stop"}
