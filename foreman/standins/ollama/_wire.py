"""Ollama's wire details: Go-style JSON, timestamps, durations and request decoding.

Everything here mirrors what Ollama's Go server (gin + ``encoding/json``) puts on
the wire (``docs/ollama-protocol.md``): compact JSON with ``<>&`` escaped, RFC 3339
timestamps with trailing zeros trimmed, ``time.Duration`` as integer
nanoseconds, ``keep_alive`` as seconds or a Go duration string, and decoder
error texts close to Go's.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "FOREVER",
    "JSON",
    "NDJSON",
    "RequestError",
    "decode_body",
    "dumps",
    "go_quote",
    "nanos",
    "parse_keep_alive",
    "rfc3339",
]

JSON: Final = "application/json; charset=utf-8"
"""Content type of gin's ``c.JSON``."""
NDJSON: Final = "application/x-ndjson"
"""Content type of Ollama's streams (no charset)."""
FOREVER: Final = 9_223_372_036.854775807
"""Go's largest ``time.Duration`` (``math.MaxInt64`` ns) in seconds: keep_alive "forever"."""

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


class RequestError(Exception):
    """A request Ollama rejects before doing any work: ``status`` + ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def dumps(value: Any) -> bytes:
    """Encode like Go ``encoding/json``: compact, raw UTF-8, ``<>&`` as ``\\u003c`` etc.

    Key order is the dict's insertion order; there is no trailing newline.
    ``<>&`` can only occur inside JSON strings, so a global replace is exact.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.translate(_GO_ESCAPES).encode()


def go_quote(text: str) -> str:
    """Go's ``%q`` for ordinary strings (double quotes, backslash escapes)."""
    return json.dumps(text, ensure_ascii=False)


def nanos(seconds: float) -> int:
    """A duration in seconds as Go's ``time.Duration`` JSON: integer nanoseconds."""
    return round(seconds * 1e9)


def rfc3339(epoch_ns: int | None = None) -> str:
    """UTC RFC 3339 with nanoseconds, trailing zeros trimmed, ``Z`` suffix (Go ``time.Time``).

    Args:
        epoch_ns: wall-clock nanoseconds since the epoch; default now.
    """
    if epoch_ns is None:
        epoch_ns = time.time_ns()
    seconds, fraction = divmod(epoch_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        stamp += "." + f"{fraction:09d}".rstrip("0")
    return stamp + "Z"


# --- keep_alive (api.Duration) ---------------------------------------------------------

_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_COMPONENT = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def _parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` in seconds; raises :class:`ValueError` with Go's text."""
    original, rest, sign = text, text, 1.0
    if rest[:1] in ("-", "+"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"time: invalid duration {go_quote(original)}")
    total = 0.0
    while rest:
        match = _COMPONENT.match(rest)
        assert match is not None  # the pattern matches the empty string
        number, unit = match.groups()
        if number in ("", "."):
            raise ValueError(f"time: invalid duration {go_quote(original)}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {go_quote(original)}")
        if unit not in _UNITS:
            raise ValueError(
                f"time: unknown unit {go_quote(unit)} in duration {go_quote(original)}"
            )
        total += float(number) * _UNITS[unit]
        rest = rest[match.end() :]
    return sign * total


def parse_keep_alive(value: Any) -> float | None:
    """``keep_alive`` as Ollama reads it, in seconds.

    A number is seconds, a string a Go duration (``"10m"``, ``"1h30m"``, ``"-1m"``);
    negative means forever (:data:`FOREVER`). ``None`` (absent or ``null``) means
    "not set". Raises :class:`RequestError` 400 with Go's message otherwise.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise RequestError(400, "Unsupported type: 'bool'")
    if isinstance(value, int | float):
        return FOREVER if value < 0 else float(value)
    if isinstance(value, str):
        try:
            seconds = _parse_go_duration(value)
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None
        return FOREVER if seconds < 0 else seconds
    kind = "[]interface {}" if isinstance(value, list) else "map[string]interface {}"
    raise RequestError(400, f"Unsupported type: '{kind}'")


# --- request bodies --------------------------------------------------------------------

_GO_KIND = {
    bool: "bool",
    str: "string",
    int: "number",
    float: "number",
    list: "array",
    dict: "object",
}


def _go_kind(value: Any) -> str:
    return _GO_KIND.get(type(value), "object")


def _quote_char(char: str) -> str:
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    return "'" + json.dumps(char, ensure_ascii=False)[1:-1] + "'"


class _Constant(ValueError):
    """Python accepts NaN/Infinity; Go does not."""


def _reject_constant(name: str) -> Any:
    raise _Constant(name)


def _go_decode_error(exc: json.JSONDecodeError, text: str) -> str:
    if exc.pos >= len(text) or exc.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    char = _quote_char(text[exc.pos])
    if exc.msg.startswith("Expecting property name"):
        return f"invalid character {char} looking for beginning of object key string"
    if exc.msg.startswith("Expecting ':'"):
        return f"invalid character {char} after object key"
    if exc.msg.startswith("Expecting ','"):
        return f"invalid character {char} after object key:value pair"
    if exc.msg.startswith("Invalid control character"):
        return f"invalid character {char} in string literal"
    if exc.msg.startswith("Invalid \\escape"):
        return f"invalid character {char} in string escape code"
    return f"invalid character {char} looking for beginning of value"


GO_MAX_DEPTH: Final = 10_000  # encoding/json's maxNestingDepth


def _first_value(text: str) -> Any:
    """The first JSON value of ``text``, nested as deep as Go allows (10,000 levels).

    Python's parser recurses per level and stops near 1,000; on that, the depth is
    counted and Go's ``exceeded max depth`` syntax error raised beyond 10,000, else
    the value parsed again with room to recurse (a few MiB of C stack).
    """
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    try:
        return decoder.raw_decode(text)[0]
    except RecursionError:
        pass
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > GO_MAX_DEPTH:
                raise RequestError(400, f"invalid character {_quote_char(char)} exceeded max depth")
        elif char in "]}":
            depth -= 1
            if depth == 0:
                break
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 3 * GO_MAX_DEPTH)
    try:
        return decoder.raw_decode(text)[0]
    finally:
        sys.setrecursionlimit(limit)


def decode_body(raw: bytes, go_type: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """Decode a request body as gin's ``ShouldBindJSON`` into ``go_type`` would.

    Args:
        raw: the request body.
        go_type: the Go struct name used in messages (``"ChatRequest"``).
        fields: JSON key -> Go type name for the keys whose JSON type is checked
            (``"string"``, ``"bool"``, ``"int"``, ``"[]int"``, ``"[]api.Message"``,
            ``"map[string]interface {}"``); other keys are taken as they are.

    Returns:
        The JSON object (``null`` gives ``{}``, as it leaves a Go struct zero).

    Raises:
        RequestError: 400 ``missing request body`` for an empty body, else 400 with
            a Go-like decoder message. Like Go's ``Decoder.Decode`` only the first
            JSON value is read; trailing bytes are ignored.
    """
    text = raw.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        raise RequestError(400, "missing request body")
    try:
        value = _first_value(text)
    except json.JSONDecodeError as exc:
        raise RequestError(400, _go_decode_error(exc, text)) from None
    except _Constant as exc:
        raise RequestError(
            400, f"invalid character {_quote_char(str(exc)[0])} looking for beginning of value"
        ) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(
            400, f"json: cannot unmarshal {_go_kind(value)} into Go value of type api.{go_type}"
        )
    for key, expected in fields.items():
        got = value.get(key)
        if got is None or _fits(got, expected):
            continue
        shown = _go_kind(got)
        if shown == "number":
            shown = f"number {json.dumps(got)}" if expected == "int" else shown
        where = f"Go struct field {go_type}.{key} of type {expected}"
        raise RequestError(400, f"json: cannot unmarshal {shown} into {where}")
    return value


def _fits(value: Any, expected: str) -> bool:
    if expected == "string":
        return isinstance(value, str)
    if expected == "bool":
        return isinstance(value, bool)
    if expected == "int":
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and value == int(value)
        )
    if expected.startswith("[]"):
        return isinstance(value, list)
    if expected.startswith("map["):
        return isinstance(value, dict)
    return True
