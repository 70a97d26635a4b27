"""What the stand-in's "models" say: deterministic replies, embeddings and NDJSON lines.

Replies are made from the words of the prompt (the last user message for chat),
so tests can predict them: with ``reply_tokens=6`` the prompt ``"hello there"``
gets ``"hello there hello there hello there"``, one word per token. Thinking models
(capability ``thinking``) think first, in :data:`THINKING`. Embeddings are
derived from a sha256 of the text: short, deterministic, L2-normalised.

Line shapes and key order follow Ollama's ``/api/chat`` and ``/api/generate`` answers;
durations are integer nanoseconds, ``created_at`` is wall-clock UTC.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import trio

from ._wire import nanos, rfc3339

__all__ = ["RUNNER_STOPPED", "THINKING", "ConnectionAborted", "Plan", "embed", "lines"]

THINKING: Final = ("Thinking", " it over.")
"""The thinking tokens a thinking model emits before its answer."""
RUNNER_STOPPED: Final = (
    "model runner has unexpectedly stopped, this may be due to resource limitations "
    "or an internal error, check ollama server logs for details"
)
"""Ollama's error text for a crashed runner."""


class ConnectionAborted(Exception):
    """Raised to break the HTTP connection mid-response (the ``die_after`` fault)."""


def reply_words(text: str, count: int) -> list[str]:
    """``count`` reply tokens cycling through the words of ``text`` (``"ok"`` if none)."""
    words = text.split() or ["ok"]
    return [("" if i == 0 else " ") + words[i % len(words)] for i in range(count)]


def token_ids(text: str) -> list[int]:
    """Stable fake token ids for ``text`` (``context`` of /api/generate)."""
    return [zlib.crc32(word.encode()) % 128_000 for word in text.split()]


def embed(text: str, length: int, *, normalise: bool = True) -> list[float]:
    """A deterministic vector of ``length`` floats for ``text``.

    Normalised vectors (``/api/embed``) are rounded to 8 significant digits, roughly
    float32 precision; magnitudes stay above 0.01 so no float is written in
    exponent form. Unnormalised ones (``/api/embeddings``) keep float64 digits.
    """
    digest = b""
    while len(digest) < length:
        digest += hashlib.sha256(digest + text.encode()).digest()
    raw = [(-1.0 if b & 0x80 else 1.0) * (0.05 + (b & 0x7F) / 127 * 0.95) for b in digest[:length]]
    if not normalise:
        return raw
    norm = math.sqrt(sum(x * x for x in raw))
    return [float(f"{x / norm:.8g}") for x in raw]


def normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [float(f"{x / norm:.8g}") for x in vector]


@dataclass
class Plan:
    """One chat or generate reply, decided before generation starts.

    Attributes:
        kind: ``"chat"`` or ``"generate"``.
        model: the request's model string, echoed verbatim.
        tokens: ``(field, text)`` pairs, field ``"thinking"`` or ``"content"``.
        done_reason: ``"stop"``, or ``"length"`` when ``num_predict`` cut the reply.
        prompt_eval_count: prompt "tokens".
        started: trio time the handler started (for ``total_duration``).
        loaded: trio time a runner was assigned (``load_duration`` = loaded - started).
        context: token ids for generate's final line (None for chat).
        stamp: renders ``created_at`` for "now".
    """

    kind: Literal["chat", "generate"]
    model: str
    tokens: list[tuple[str, str]]
    done_reason: str
    prompt_eval_count: int
    started: float
    loaded: float = 0.0
    context: list[int] | None = None
    stamp: Callable[[], str] = rfc3339
    metrics: dict[str, int] = field(default_factory=dict)

    def line(self, token: tuple[str, str] | None = None) -> dict[str, Any]:
        """A ``done:false`` line for ``token``; with no token the ``done:true`` line."""
        kind, text = token or ("content", "")
        thinking = {"thinking": text} if kind == "thinking" else {}
        content = text if kind == "content" else ""
        body: dict[str, Any] = {"model": self.model, "created_at": self.stamp()}
        if self.kind == "chat":
            body["message"] = {"role": "assistant", "content": content, **thinking}
        else:
            body["response"] = content
            body.update(thinking)
        body["done"] = token is None
        if token is None:
            body["done_reason"] = self.done_reason
            if self.context is not None:
                body["context"] = self.context
            body.update(self.metrics)
        return body

    def merged(self, final: dict[str, Any]) -> dict[str, Any]:
        """The ``stream:false`` object: ``final`` with content and thinking concatenated."""
        content = "".join(t for k, t in self.tokens if k == "content")
        thinking = "".join(t for k, t in self.tokens if k == "thinking")
        body = dict(final)
        if self.kind == "chat":
            body["message"] = {"role": "assistant", "content": content}
            if thinking:
                body["message"]["thinking"] = thinking
        else:
            rebuilt: dict[str, Any] = {}
            for key, value in body.items():
                rebuilt[key] = content if key == "response" else value
                if key == "response" and thinking:
                    rebuilt["thinking"] = thinking
            body = rebuilt
        return body

    def finish(self, eval_started: float, eval_count: int) -> None:
        """Fill in the metrics (Go omits zero values, so every duration is at least 1 ns)."""
        now = trio.current_time()
        metrics = {
            "total_duration": max(1, nanos(now - self.started)),
            "load_duration": max(1, nanos(self.loaded - self.started)),
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": max(1, nanos(self.prompt_eval_count * 0.0001)),
            "eval_count": eval_count,
            "eval_duration": max(1, nanos(now - eval_started)),
        }
        self.metrics = {k: v for k, v in metrics.items() if v}


async def lines(
    plan: Plan,
    *,
    token_rate: float,
    faults: Callable[[], Any],
    on_close: Callable[[], None],
    thawed: Callable[[], Awaitable[None]],
) -> AsyncGenerator[dict[str, Any], None]:
    """Produce a reply's lines at ``token_rate`` lines per second.

    Sleeps ``1/token_rate`` seconds before every line (the ``done`` line too).
    Before line ``i`` (0-based) the current ``faults()`` apply: ``stall_after == i``
    sleeps until cancelled, ``die_after == i`` raises :class:`ConnectionAborted`,
    ``runner_error_after == i`` yields Ollama's ``{"error": ...}`` and ends.
    ``on_close`` runs in ``finally`` (end, error or cancellation); ``thawed()`` is
    awaited before every line (it blocks while the stand-in is frozen).
    """
    try:
        gap = 1.0 / token_rate if token_rate > 0 else 0.0
        eval_started = trio.current_time()
        for index in range(len(plan.tokens) + 1):
            await trio.sleep(gap)
            await thawed()
            current = faults()
            if current.stall_after == index:
                await trio.sleep_forever()
            if current.die_after == index:
                raise ConnectionAborted(f"stand-in fault: connection aborted after {index} lines")
            if current.runner_error_after == index:
                yield {"error": RUNNER_STOPPED}
                return
            if index < len(plan.tokens):
                yield plan.line(plan.tokens[index])
            else:
                plan.finish(eval_started, len(plan.tokens))
                yield plan.line()
    finally:
        on_close()
