"""Ollama's side of a request: ``/api/chat`` and ``/api/generate`` fields, parsed and checked
(:func:`parse_request`), and the images they carry (:func:`media_type`, :func:`data_url`)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Endpoint",
    "Message",
    "Options",
    "Request",
    "ToolCall",
    "data_url",
    "media_type",
    "parse_request",
]

Endpoint = Literal["chat", "generate"]


# --- Ollama's request ----------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One tool call: ``id`` as the backend (or foreman) named it, ``arguments`` an object."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class Message:
    """One message of the conversation, system messages included, in their order.

    ``images`` are base64 strings without a ``data:`` prefix, as Ollama takes them;
    ``tool_call_id`` on a ``tool`` message names the call it answers (always set
    once parsed), ``tool_name`` the tool (newer Ollama clients send it).
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str = ""
    tool_name: str = ""


@dataclass
class Options:
    """The sampling ``options`` the backends understand; None when the client did not set them.

    ``num_predict`` is None when absent or below 1 (Ollama's -1 "no limit" and -2 "fill
    the context" have no equivalent). Claude takes only ``stop`` and ``num_predict``,
    OpenAI all of them. Neither takes ``top_k``, ``min_p``, ``typical_p``,
    ``repeat_penalty`` and ``repeat_last_n``, nor the load-time options (``num_ctx``...).
    """

    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    num_predict: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass
class Request:
    """An Ollama chat or generate request, as far as the translators use it.

    ``model`` is the name the client sent (echoed in every line). ``tools`` are
    Ollama's function tools, which are OpenAI's: ``{"type": "function", "function":
    {"name", "description", "parameters"}}``. ``format`` is ``"json"``, a JSON schema
    (a dict), or None. ``load_only``: there is nothing to answer (a chat without
    messages, a generate without a prompt), which Ollama treats as a load call.
    """

    endpoint: Endpoint
    model: str
    stream: bool
    messages: list[Message]
    tools: list[dict[str, Any]]
    options: Options
    format: str | dict[str, Any] | None
    load_only: bool
    unload: bool

    @property
    def system(self) -> list[str]:
        """The system messages' texts, in order."""
        return [m.content for m in self.messages if m.role == "system"]


def parse_request(endpoint: Endpoint, fields: dict[str, Any]) -> Request:
    """Read an Ollama request's fields (its parsed JSON) the way Ollama reads them.

    ``stream`` defaults to true. For chat, assistant ``tool_calls`` get ids and tool
    results the ids of their calls (see :func:`_pair_tool_calls`). For generate,
    ``system`` becomes a system message and ``prompt`` with ``images`` a user message.
    Ignored here: ``think``, ``keep_alive`` (but for telling a load from an unload),
    ``raw``, ``template``, ``context``, ``suffix`` (no backend fills in the middle),
    ``truncate``, ``shift``, ``logprobs``, and ``tools`` on generate. Fields of the
    wrong JSON type count as absent; what the backend makes of odd values is its
    answer to give.
    """
    messages: list[Message] = []
    if endpoint == "chat":
        for raw in _list(fields.get("messages")):
            if not isinstance(raw, dict):
                continue
            role = _text(raw.get("role")).lower() or "user"
            if role in ("system", "user", "assistant", "tool"):
                messages.append(
                    Message(
                        role=role,  # type: ignore[arg-type]
                        content=_text(raw.get("content")),
                        images=[i for i in _list(raw.get("images")) if isinstance(i, str)],
                        tool_calls=_tool_calls(raw.get("tool_calls")),
                        tool_call_id=_text(raw.get("tool_call_id")),
                        tool_name=_text(raw.get("tool_name")),
                    )
                )
        _pair_tool_calls(messages)
        load_only = not messages
    else:
        if system := _text(fields.get("system")):
            messages.append(Message(role="system", content=system))
        images = [i for i in _list(fields.get("images")) if isinstance(i, str)]
        prompt = _text(fields.get("prompt"))
        if prompt or images:
            messages.append(Message(role="user", content=prompt, images=images))
        load_only = not (prompt or images)
    tools = _list(fields.get("tools")) if endpoint == "chat" else []
    return Request(
        endpoint=endpoint,
        model=_text(fields.get("model")),
        stream=fields.get("stream") is not False,
        messages=messages,
        tools=[t for t in tools if isinstance(t, dict) and _tool_name(t)],
        options=_options(fields.get("options")),
        format=_format(fields.get("format")),
        load_only=load_only,
        unload=fields.get("keep_alive") in (0, "0", "0s", "0m", "0h"),
    )


def _pair_tool_calls(messages: list[Message]) -> None:
    """Give every assistant tool call an id and every tool result the id of its call.

    Ollama's history may carry ids (``tool_calls[].id``, ``tool_call_id``, newer
    versions) or only names (``tool_name``) or nothing; both APIs need ids that match.
    A call without one gets ``call_<message>_<call>``: derived from its position, so
    the same history gives the same ids on every turn (and Claude's prompt cache
    still hits). A tool result takes, among the calls of the assistant message
    before it not yet answered, the one with its ``tool_call_id``, else the first
    with its ``tool_name``, else the first. One with no call left keeps its own id
    (or gets one), and the backend says what it thinks of that.
    """
    pending: list[ToolCall] = []
    for m, message in enumerate(messages):
        if message.role == "assistant":
            message.tool_calls = [
                call if call.id else ToolCall(f"call_{m}_{c}", call.name, call.arguments)
                for c, call in enumerate(message.tool_calls)
            ]
            pending = list(message.tool_calls)
        elif message.role == "tool":
            match = next((c for c in pending if c.id == message.tool_call_id), None)
            match = match or next((c for c in pending if c.name == message.tool_name), None)
            match = match or (pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
                message.tool_call_id = match.id
            message.tool_call_id = message.tool_call_id or f"call_{m}_result"
        elif message.role == "user":
            pending = []


def _tool_calls(value: Any) -> list[ToolCall]:
    calls = []
    for raw in _list(value):
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            continue
        arguments = function.get("arguments")
        if isinstance(arguments, str):  # OpenAI's habit; Ollama itself wants an object
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = None
        calls.append(
            ToolCall(
                id=_text(raw.get("id")),
                name=str(function["name"]),
                arguments=arguments if isinstance(arguments, dict) else {},
            )
        )
    return calls


def _tool_name(tool: dict[str, Any]) -> str:
    function = tool.get("function")
    return str(function.get("name") or "") if isinstance(function, dict) else ""


def _options(value: Any) -> Options:
    raw = value if isinstance(value, dict) else {}
    stop = raw.get("stop")
    num_predict = raw.get("num_predict")
    return Options(
        temperature=_number(raw.get("temperature")),
        top_p=_number(raw.get("top_p")),
        stop=[stop] if isinstance(stop, str) else [s for s in _list(stop) if isinstance(s, str)],
        num_predict=n if (n := _integer(num_predict)) is not None and n >= 1 else None,
        seed=_integer(raw.get("seed")),
        presence_penalty=_number(raw.get("presence_penalty")),
        frequency_penalty=_number(raw.get("frequency_penalty")),
    )


def _format(value: Any) -> str | dict[str, Any] | None:
    if value == "json" or isinstance(value, dict):
        return value
    return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- images ----------------------------------------------------------------------------

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def media_type(image: str) -> str:
    """The media type of a base64 image, sniffed from its first bytes.

    PNG, JPEG, GIF and WebP, the formats both Claude and OpenAI take; anything else
    (or bad base64) is ``application/octet-stream``, which the backend then refuses
    with its own message.
    """
    try:
        head = base64.b64decode(image[:16], validate=False)
    except (binascii.Error, ValueError):
        return "application/octet-stream"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def data_url(image: str) -> str:
    """A base64 image as a ``data:`` URL (what OpenAI's ``image_url`` takes)."""
    return f"data:{media_type(image)};base64,{image}"
