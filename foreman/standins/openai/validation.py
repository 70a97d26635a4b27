"""What the OpenAI stand-in accepts: its constants, errors and request validation."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ..cloud import ApiError as CloudError

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small")
DEFAULT_REPLY = "Hello! This is the OpenAI stand-in, answering in a few short words."
MODEL_CREATED = 1721172741
SYSTEM_FINGERPRINT = "fp_standin01"

_ARGUMENTS = frozenset(
    "model messages audio frequency_penalty function_call functions logit_bias logprobs "
    "max_completion_tokens max_tokens metadata modalities n parallel_tool_calls prediction "
    "presence_penalty prompt_cache_key prompt_cache_retention reasoning_effort "
    "response_format safety_identifier seed service_tier stop store stream stream_options "
    "temperature tool_choice tools top_logprobs top_p user verbosity web_search_options".split()
)
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_PART_TYPES = ("text", "image_url", "input_audio", "refusal", "audio", "file")
_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,(.*)$", re.DOTALL)
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class ApiError(CloudError):
    """An error answer: HTTP ``status`` with OpenAI's ``{"error": {"message", "type",
    "param", "code"}}`` body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.kind = kind
        self.param = param
        self.code = code

    @property
    def tally(self) -> str:
        return self.code or self.kind

    def body(self, request_id: str = "") -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def _invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), "value")


def _wrong_type(param: str, expected: str, value: Any) -> ApiError:
    return _invalid(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param,
        "invalid_type",
    )


def _missing(param: str) -> ApiError:
    return _invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _is_image(data: bytes) -> bool:
    return (
        data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a"))
        or data[:4] == b"RIFF"
        and data[8:12] == b"WEBP"
    )


# --- validation ---------------------------------------------------------------------------


def _check_range(body: dict[str, Any], name: str, low: float, high: float | None) -> None:
    value = body.get(name)
    if value is None:
        return
    integer = name in ("max_tokens", "max_completion_tokens")
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise _wrong_type(name, "an integer" if integer else "a decimal", value)
    kind = "integer" if integer else "decimal"
    if value < low:
        raise _invalid(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {low:g}, but "
            f"got {value} instead.",
            name,
            f"{kind}_below_min_value",
        )
    if high is not None and value > high:
        raise _invalid(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {high:g}, but "
            f"got {value} instead.",
            name,
            f"{kind}_above_max_value",
        )


def _check_image_url(where: str, part: dict[str, Any], role: str) -> None:
    if role != "user":
        raise _invalid(
            f"Image URLs are only allowed for messages with role 'user', but this message "
            f"with role '{role}' contains an image URL.",
            where,
            "invalid_value",
        )
    image = part.get("image_url")
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        raise _missing(f"{where}.image_url.url")
    url = image["url"]
    if url.startswith(("http://", "https://")):
        return
    match = _DATA_URL.match(url)
    if match is None:
        raise _invalid(
            f"Invalid '{where}.image_url.url'. Expected a base64-encoded data URL with an "
            "image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got an "
            "invalid value.",
            f"{where}.image_url.url",
            "invalid_value",
        )
    try:
        data = base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not _is_image(data):
        raise _invalid(
            "You uploaded an unsupported image. Please make sure your image has of one the "
            "following formats: ['png', 'jpeg', 'gif', 'webp'].",
            None,
            "invalid_image_format",
        )


def _check_content(where: str, message: dict[str, Any], role: str) -> None:
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        raise _missing(f"{where}.content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _wrong_type(f"{where}.content", "one of a string or array of objects", content)
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise _wrong_type(at, "an object", part)
        kind = part.get("type")
        if kind not in _PART_TYPES:
            supported = ", ".join(f"'{t}'" for t in _PART_TYPES[:-1])
            raise _invalid(
                f"Invalid value: '{kind}'. Supported values are: {supported}, and "
                f"'{_PART_TYPES[-1]}'.",
                f"{at}.type",
                "invalid_value",
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _missing(f"{at}.text")
        if kind == "image_url":
            _check_image_url(at, part, role)


def _check_tool_calls(where: str, calls: Any) -> list[str]:
    if not isinstance(calls, list):
        raise _wrong_type(f"{where}.tool_calls", "an array", calls)
    ids = []
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        if not isinstance(call, dict):
            raise _wrong_type(at, "an object", call)
        for name in ("id", "type", "function"):
            if name not in call:
                raise _missing(f"{at}.{name}")
        function = call["function"]
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _missing(f"{at}.function.name")
        if "arguments" not in function:
            raise _missing(f"{at}.function.arguments")
        if not isinstance(function["arguments"], str):
            raise _wrong_type(f"{at}.function.arguments", "a string", function["arguments"])
        ids.append(call["id"])
    return ids


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array", messages)
    if not messages:
        raise _invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead.",
            "messages",
            "empty_array",
        )
    pending: list[str] = []  # tool_call ids still waiting for their tool message
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if role not in _ROLES:
            supported = ", ".join(f"'{r}'" for r in _ROLES[:-1])
            raise _invalid(
                f"Invalid value: '{role}'. Supported values are: {supported}, and '{_ROLES[-1]}'.",
                f"{where}.role",
                "invalid_value",
            )
        if pending and role != "tool":
            raise _invalid(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)}",
                f"messages.[{i}].role",
            )
        _check_content(where, message, role)
        if role == "tool":
            if "tool_call_id" not in message:
                raise _missing(f"{where}.tool_call_id")
            if message["tool_call_id"] not in pending:
                raise _invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            pending.remove(message["tool_call_id"])
        elif role == "assistant" and message.get("tool_calls") is not None:
            pending = _check_tool_calls(where, message["tool_calls"])
    if pending:
        raise _invalid(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(pending)}",
            f"messages.[{len(messages)}].role",
        )


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _wrong_type("tools", "an array", tools)
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _wrong_type(f"tools[{i}]", "an object", tool)
            if tool.get("type") != "function":
                raise _invalid(
                    f"Invalid value: '{tool.get('type')}'. Supported values are: 'function' "
                    "and 'custom'.",
                    f"tools[{i}].type",
                    "invalid_value",
                )
            function = tool.get("function")
            if not isinstance(function, dict) or "name" not in function:
                raise _missing(f"tools[{i}].function.name")
            if not isinstance(function["name"], str) or not _TOOL_NAME.match(function["name"]):
                raise _invalid(
                    f"Invalid 'tools[{i}].function.name': string does not match pattern. "
                    "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                    f"tools[{i}].function.name",
                    "invalid_value",
                )
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not tools:
        raise _invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            "tool_choice",
        )
    names = [t["function"]["name"] for t in tools]
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") != "function" or name not in names:
            raise _invalid(
                f"Invalid value for 'tool_choice': tool '{name}' is not among the tools.",
                "tool_choice",
            )
    elif choice not in ("none", "auto", "required"):
        raise _invalid(
            f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
            "tool_choice",
            "invalid_value",
        )


def validate(body: Any) -> dict[str, Any]:
    """Check a chat completion request as the API does; returns it or raises :class:`ApiError`."""
    if not isinstance(body, dict):
        raise _invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON. If you have trouble figuring out how to "
            "fix this, please contact us through our help center at help.openai.com.)"
        )
    for key in body:
        if key not in _ARGUMENTS:
            raise _invalid(f"Unrecognized request argument supplied: {key}")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _invalid("you must provide a model parameter")
    _check_messages(body.get("messages"))
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1)
    _check_range(body, "max_tokens", 1, None)
    _check_range(body, "max_completion_tokens", 1, None)
    stop = body.get("stop")
    if isinstance(stop, list):
        if len(stop) > 4:
            raise _invalid(
                "Invalid 'stop': array too long. Expected an array with maximum length 4, but "
                f"got an array with length {len(stop)} instead.",
                "stop",
                "array_above_max_length",
            )
        if not all(isinstance(s, str) for s in stop):
            raise _wrong_type("stop", "a string", next(s for s in stop if not isinstance(s, str)))
    elif stop is not None and not isinstance(stop, str):
        raise _wrong_type("stop", "one of a string or array of strings", stop)
    if body.get("stream_options") is not None and not body.get("stream"):
        raise _invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    _check_tools(body)
    return body
