"""What Ollama's compatibility middlewares share (``middleware/openai.go``, ``anthropic.go``).

Each middleware binds the face's request, rewrites it into a native one, runs the
native handler and rewrites what the handler writes:

* an error the middleware finds itself is gin's ``AbortWithStatusJSON``: the face's
  error object, ``application/json; charset=utf-8``, no trailing newline;
* an error the handler writes (status not 200) goes through the writer's
  ``writeError``: the face's error object for the same status, ``application/json``,
  ``json.Encoder``'s trailing newline;
* a 200 answer is converted line by line (streams: Server-Sent Events,
  ``text/event-stream``) or whole (``application/json``, trailing newline).

A native stream's ``{"error": ...}`` line (a runner that died) is written at status
200, so each writer converts it like an empty answer: see the face modules.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Final, Protocol

from quart import Response, request

from ._http import ABORT_KEY
from ._inference import embed_handler, infer, show_handler
from ._wire import RequestError, dumps

__all__ = [
    "new_error",
    "openai_text",
    "JSON_PLAIN",
    "NO_CACHE",
    "SSE",
    "EventBody",
    "Writer",
    "abort",
    "bind",
    "go_marshal",
    "guarded",
    "request_body",
    "run_native",
    "run_writer",
    "text_of",
    "unix",
    "usage",
    "written_error",
]

SSE: Final = "text/event-stream"
JSON_PLAIN: Final = "application/json"
"""What a writer's ``writeError`` and ``writeResponse`` set (gin's c.JSON adds the charset)."""
_GIN_JSON: Final = "application/json; charset=utf-8"
#: What the Anthropic and Responses middlewares set on a stream.
NO_CACHE: Final = (("Cache-Control", "no-cache"),)

#: One native object in, the SSE bytes it becomes out (b"" for none).
Convert = Callable[[dict[str, Any]], bytes]


def go_marshal(value: Any) -> bytes:
    """Go's ``json.Marshal`` of ``map[string]any`` values: keys sorted, ``<>&`` escaped."""
    return dumps(json.loads(json.dumps(value, sort_keys=True)))


def text_of(content: Any, types: tuple[str, ...] = ("text",)) -> str:
    """A message's text: the string itself, or its text parts (of ``types``) concatenated,
    as Ollama's converters join them."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") in types
        )
    return ""


def unix(created_at: Any) -> int:
    """``time.Time.Unix()`` of an RFC 3339 ``created_at`` (0001-01-01 for none, as Go's zero)."""
    if not isinstance(created_at, str) or not created_at:
        return -62135596800
    text = created_at.rstrip("Z")
    seconds = text.split(".")[0]
    return int(datetime.fromisoformat(seconds + "+00:00").timestamp())


def abort(error: Callable[[int, str], dict[str, Any]], status: int, message: str) -> Response:
    """gin's ``AbortWithStatusJSON(status, error(status, message))``."""
    return Response(dumps(error(status, message)), status, content_type=_GIN_JSON)


def bind(raw: bytes) -> dict[str, Any]:
    """gin's ``ShouldBindJSON`` into a face's request struct (an object, or RequestError)."""
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        raise RequestError(400, "EOF")
    try:
        value = json.JSONDecoder().raw_decode(text)[0]
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"invalid character at offset {exc.pos}: {exc.msg}") from None
    except RecursionError:
        raise RequestError(400, "exceeded max depth") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, "json: cannot unmarshal into Go value of the request type")
    return value


async def request_body() -> dict[str, Any]:
    """:func:`bind` of the request's body (RequestError, which :func:`guarded` answers)."""
    return bind(await request.get_data())


async def guarded(
    answer: Awaitable[Response], error: Callable[[int, str], dict[str, Any]]
) -> Response:
    """``answer``; a body :func:`bind` refused as gin aborts it (400, the face's error);
    or a 400 for a request whose fields have the wrong JSON types (Go's decoder refuses
    those when it binds; the rewrites here meet them later)."""
    try:
        return await answer
    except RequestError as exc:
        return abort(error, exc.status, exc.message)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        return abort(error, 400, f"json: cannot unmarshal: {exc}")


def usage(line: dict[str, Any], prompt: str, completion: str) -> dict[str, Any]:
    """A native final line's token counts under a face's names, with their total:
    ``{prompt: prompt_eval_count, completion: eval_count, "total_tokens": sum}``."""
    prompt_count, completion_count = line.get("prompt_eval_count", 0), line.get("eval_count", 0)
    return {
        prompt: prompt_count,
        completion: completion_count,
        "total_tokens": prompt_count + completion_count,
    }


class EventBody:
    """A stream of native lines, each converted to Server-Sent Events as it comes."""

    def __init__(self, lines: AsyncGenerator[dict[str, Any], None], convert: Convert) -> None:
        self._lines = lines
        self._convert = convert

    def __aiter__(self) -> EventBody:
        return self

    async def __anext__(self) -> bytes:
        while True:
            events = self._convert(await self._lines.__anext__())
            if events:
                return events

    async def aclose(self) -> None:
        await self._lines.aclose()


async def run_native(
    kind: str,
    native: dict[str, Any],
    *,
    standin: Any,
    error: Callable[[int, str], dict[str, Any]],
    stream: Convert | None,
    whole: Callable[[dict[str, Any]], dict[str, Any]],
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """Run the native ``kind`` handler on ``native`` and rewrite its answer for a face.

    Args:
        error: the face's ``NewError(status, message)``.
        stream: converts each native line to SSE bytes (None: ``stream: false``).
        whole: converts the one native object of a ``stream: false`` answer.
        headers: what the middleware sets on a streamed answer (``Cache-Control``).
    """
    wrap = None
    if stream is not None:
        convert = stream

        def wrap(lines: AsyncGenerator[dict[str, Any], None]) -> Response:
            response = Response(EventBody(lines, convert), 200, content_type=SSE)
            for name, value in headers:
                response.headers[name] = value
            return response

    try:
        if kind == "embed":
            response = await embed_handler(standin, False, dumps(native))
        elif kind == "show":
            response = await show_handler(standin, dumps(native))
        else:
            response = await infer(standin, kind, dumps(native), wrap)  # type: ignore[arg-type]
    except RequestError as exc:
        return written_error(error, exc.status, exc.message)
    if request.scope.get(ABORT_KEY) or response.mimetype == SSE:
        return response
    data = await response.get_data()
    if response.status_code != 200:
        try:
            message = json.loads(data)["error"]
        except (ValueError, KeyError, TypeError):
            message = data.decode("utf-8", "replace")
        return written_error(error, response.status_code, message)
    return Response(dumps(whole(json.loads(data))) + b"\n", 200, content_type=JSON_PLAIN)


class Writer(Protocol):
    """A face's writer: how it rewrites a native answer, streamed or whole."""

    def event(self, line: dict[str, Any]) -> bytes:
        """One native line of a stream as the SSE bytes it becomes (b"" for none)."""
        ...

    def whole(self, final: dict[str, Any]) -> dict[str, Any]:
        """The one native object of a ``stream: false`` answer as the face's object."""
        ...


async def run_writer(
    kind: str,
    native: dict[str, Any],
    *,
    standin: Any,
    error: Callable[[int, str], dict[str, Any]],
    writer: Writer,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """:func:`run_native` with ``writer``'s ``event`` when ``native["stream"]`` is true,
    its ``whole`` otherwise."""
    stream = writer.event if native["stream"] else None
    return await run_native(
        kind,
        native,
        standin=standin,
        error=error,
        stream=stream,
        whole=writer.whole,
        headers=headers,
    )


def written_error(
    error: Callable[[int, str], dict[str, Any]], status: int, message: str
) -> Response:
    """A handler's error as the face's writer rewrites it (``writeError``)."""
    return Response(dumps(error(status, message)) + b"\n", status, content_type=JSON_PLAIN)


def new_error(status: int, message: str) -> dict[str, Any]:
    """``openai.NewError``."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def openai_text(content: Any) -> str:
    """The text of an OpenAI message ``content`` (a string or typed parts)."""
    return text_of(content, ("text", "input_text", "output_text"))
