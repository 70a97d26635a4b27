"""What Ollama would have answered with ``"stream": false``, assembled from a stream.

A streamed chat is a run of ``{"message": {"content": ...}, "done": false}`` lines
and a final ``done: true`` line with the stats; the non-streaming answer is that
final object with the whole ``message.content`` (and ``thinking``, ``tool_calls``)
in it. For generate, the text is in ``response`` (and ``thinking``). Keys keep the
final line's order; the JSON is written as Go writes it (:func:`foreman.dataplane.jsonwire.dumps`).
"""

from __future__ import annotations

import json
from typing import Any

from ..dataplane.jsonwire import dumps

__all__ = ["StreamError", "assemble"]


class StreamError(ValueError):
    """The stream ended with an ``{"error": ...}`` line, or without a final line."""


def assemble(endpoint: str, stream: bytes) -> bytes:
    """The ``"stream": false`` answer for ``endpoint`` (``chat`` or ``generate``).

    Raises:
        StreamError: the stream carried an error line, or never finished.
    """
    objects = [json.loads(line) for line in stream.splitlines() if line.strip()]
    if objects and "error" in objects[-1]:
        raise StreamError(str(objects[-1]["error"]))
    if not objects or objects[-1].get("done") is not True:
        raise StreamError("the stream ended before its final line")
    final = dict(objects[-1])
    if endpoint == "chat":
        final["message"] = _message([o.get("message") or {} for o in objects], final)
    else:
        final = _with_text(final, objects)
    return dumps(final)


def _message(parts: list[dict[str, Any]], final: dict[str, Any]) -> dict[str, Any]:
    last = final.get("message") or {}
    message: dict[str, Any] = {"role": last.get("role", "assistant")}
    message["content"] = "".join(p.get("content") or "" for p in parts)
    thinking = "".join(p.get("thinking") or "" for p in parts)
    if thinking:
        message["thinking"] = thinking
    tool_calls = [call for p in parts for call in p.get("tool_calls") or []]
    if tool_calls:
        message["tool_calls"] = tool_calls
    for key, value in last.items():
        message.setdefault(key, value)
    return message


def _with_text(final: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, Any]:
    text = "".join(o.get("response") or "" for o in objects)
    thinking = "".join(o.get("thinking") or "" for o in objects)
    out: dict[str, Any] = {}
    for key, value in final.items():
        if key == "thinking":
            continue
        out[key] = text if key == "response" else value
        if key == "response" and thinking:
            out["thinking"] = thinking
    return out
