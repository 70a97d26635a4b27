"""The pieces both cloud stand-ins use: faults, ids, tokens, errors, requests, replies."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FAULTS",
    "Aborted",
    "ApiError",
    "Reply",
    "Request",
    "cut",
    "json_text",
    "random_id",
    "sample_value",
    "words",
]

#: The faults and their defaults (what ``POST /_standin/faults`` sets back when unnamed).
FAULTS: dict[str, Any] = {
    "overloaded": 0,
    "rate_limited": 0,
    "delay": 0.0,
    "die_after": None,
    "fail_midstream": False,
}

_ALPHABET = string.ascii_letters + string.digits


# --- small helpers ------------------------------------------------------------------------


def random_id(prefix: str, length: int = 22) -> str:
    """``prefix`` and ``length`` random letters and digits (``msg_01...``, ``call_...``)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def words(text: str) -> int:
    """The stand-ins' tokens: the whitespace-separated words of ``text``."""
    return len(text.split())


def json_text(body: Any) -> str:
    """Compact JSON (``{"a":1}``), as both APIs write it."""
    return json.dumps(body, separators=(",", ":"))


def cut(pieces: list[str], length: int) -> list[str]:
    """The leading ``pieces`` that spell the first ``length`` characters, without empty ones."""
    out = []
    for piece in pieces:
        if length <= 0:
            break
        out.append(piece[:length])
        length -= len(piece)
    return [p for p in out if p]


def sample_value(schema: Any) -> Any:
    """A small value that fits a JSON schema: an object of each required property (every
    property if none is required), strings ``"Paris"`` or the first ``enum`` value, numbers
    ``1``, booleans ``true``, arrays ``[]``; None for anything else."""
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        names = schema.get("required") or list(properties)
        return {name: sample_value(properties.get(name)) for name in names}
    return {"string": "Paris", "integer": 1, "number": 1, "boolean": True, "array": []}.get(
        kind if isinstance(kind, str) else "", None
    )


# --- errors, requests, replies ------------------------------------------------------------


class ApiError(Exception):
    """An error answer: HTTP ``status``, ``message``, extra response ``headers``.

    Each API subclasses it with its body (:meth:`body`) and the name it is counted under
    in :attr:`CloudStandIn.errors` (:attr:`tally`).
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    @property
    def tally(self) -> str:
        """The key this error is counted under in the statistics' ``errors``."""
        raise NotImplementedError

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON body of the answer."""
        raise NotImplementedError


class Aborted(Exception):
    """Raised to break the connection (the ``die_after`` fault)."""


@dataclass
class Request:
    """One API request as the stand-in sees it (its body read whole before routing)."""

    method: str
    path: str
    query: str  # the raw query string
    headers: dict[str, str]  # lower-cased names
    raw: bytes
    body: Any  # the parsed JSON, or None if the body is empty or not JSON
    id: str  # the request id the answer carries


@dataclass
class Reply:
    """One generation's answer, before the ``stream`` flag picks how it goes out.

    ``whole`` is the non-streamed JSON object; ``frames`` the stream's Server-Sent Events
    (each ``(is_delta, text)``: the ``delay`` and ``fail_midstream`` apply to deltas);
    ``deltas`` is how many deltas the stream has (a whole reply waits as long).
    """

    whole: dict[str, Any]
    frames: Iterable[tuple[bool, str]]
    deltas: int
