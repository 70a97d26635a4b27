"""What the Anthropic stand-in accepts: its constants, errors and request validation."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ..cloud import ApiError as CloudError

#: The anthropic SDK (2.12) warns (``DeprecationWarning``) when it sends ``claude-sonnet-4-5``;
#: under ``filterwarnings = error`` drive the stand-in through the SDK with another model.
DEFAULT_MODELS = ("claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5", "claude-sonnet-4-5")
DEFAULT_REPLY = "Hello! This is the Claude stand-in, answering in a few short words."
SAMPLING_REMOVED = "2026-10-21"  # the first API version that rejects temperature/top_p/top_k
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # the SDK sends its own, e.g. 2026-10-21
MODEL_CREATED_AT = "2025-09-29T00:00:00Z"

_TOP_LEVEL = frozenset(
    "model messages max_tokens system temperature top_p top_k stop_sequences stream tools "
    "tool_choice metadata thinking service_tier container mcp_servers context_management "
    "output_config output_format inference_geo speed cache_control diagnostics".split()
)
_BLOCK_TYPES = (
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
)
_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


class ApiError(CloudError):
    """An error answer: HTTP ``status`` with Anthropic's ``{"type": "error", ...}`` body,
    ``kind`` its ``error.type`` (``invalid_request_error``, ``overloaded_error``...)."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, message, headers)
        self.kind = kind

    @property
    def tally(self) -> str:
        return self.kind

    def body(self, request_id: str) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": self.kind, "message": self.message},
            "request_id": request_id,
        }


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


def _sniff(data: bytes) -> str | None:
    """The image media type ``data`` starts like, if one of the four the API takes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def display_name(model_id: str) -> str:
    """``claude-sonnet-4-5`` -> ``Claude Sonnet 4.5`` (a trailing date is dropped)."""
    parts = [p for p in model_id.split("-") if p != "claude" and not re.fullmatch(r"\d{8}", p)]
    words: list[str] = []
    for part in parts:
        if part.isdigit() and words and words[-1][-1].isdigit():
            words[-1] += "." + part
        else:
            words.append(part if part.isdigit() else part.capitalize())
    return " ".join(["Claude", *words])


# --- validation ---------------------------------------------------------------------------


def _check_number(body: dict[str, Any], name: str, low: float, high: float | None) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{name}: Input should be a valid number")
    if value < low:
        raise _invalid(f"{name}: Input should be greater than or equal to {low:g}")
    if high is not None and value > high:
        raise _invalid(f"{name}: Input should be less than or equal to {high:g}")


def _check_image(where: str, block: dict[str, Any]) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _invalid(f"{where}.source: Field required")
    if source.get("type") == "url":
        if not isinstance(source.get("url"), str):
            raise _invalid(f"{where}.source.url.url: Field required")
        return
    if source.get("type") != "base64":
        raise _invalid(
            f"{where}.source: Input tag '{source.get('type')}' found using 'type' does not "
            "match any of the expected tags: 'base64', 'url', 'file'"
        )
    media_type = source.get("media_type")
    if media_type not in _MEDIA_TYPES:
        raise _invalid(
            f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
            "'image/gif' or 'image/webp'"
        )
    data = source.get("data")
    if not isinstance(data, str):
        raise _invalid(f"{where}.source.base64.data: Field required")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{where}.source.base64.data: invalid base64 data") from None
    sniffed = _sniff(raw)
    if sniffed is None:
        raise _invalid(f"{where}.source.base64.data: Could not process image")
    if sniffed != media_type:
        raise _invalid(
            f"{where}.source.base64.data: Image does not match the provided media type {media_type}"
        )


def _check_blocks(where: str, blocks: list[Any], *, role: str) -> None:
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        if not isinstance(block, dict):
            raise _invalid(f"{at}: Input should be a valid dictionary")
        kind = block.get("type")
        if kind not in _BLOCK_TYPES:
            tags = ", ".join(f"'{t}'" for t in _BLOCK_TYPES)
            raise _invalid(
                f"{at}: Input tag '{kind}' found using 'type' does not match any of the "
                f"expected tags: {tags}"
            )
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise _invalid(f"{at}.text.text: Field required")
            if not block["text"]:
                raise _invalid("messages: text content blocks must be non-empty")
        elif kind == "image":
            _check_image(f"{at}.image", block)
        elif kind == "tool_use":
            if role != "assistant":
                raise _invalid(f"{at}: tool_use blocks are only allowed in assistant messages")
            for name, types in (("id", str), ("name", str), ("input", dict)):
                if not isinstance(block.get(name), types):
                    raise _invalid(f"{at}.tool_use.{name}: Field required")
        elif kind == "tool_result":
            if role != "user":
                raise _invalid(f"{at}: tool_result blocks are only allowed in user messages")
            if not isinstance(block.get("tool_use_id"), str):
                raise _invalid(f"{at}.tool_result.tool_use_id: Field required")
            content = block.get("content")
            if isinstance(content, list):
                _check_blocks(f"{at}.tool_result.content", content, role=role)
            elif content is not None and not isinstance(content, str):
                raise _invalid(f"{at}.tool_result.content: Input should be a valid list")


def _ids(content: Any, kind: str, key: str) -> list[str]:
    if not isinstance(content, list):
        return []
    return [b[key] for b in content if isinstance(b, dict) and b.get("type") == kind]


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise _invalid("messages: Field required")
    if not isinstance(messages, list):
        raise _invalid("messages: Input should be a valid list")
    if not messages:
        raise _invalid("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role == "system":
            raise _invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _invalid(f"messages.{i}.content: Field required")
        content = message["content"]
        final_assistant = i == len(messages) - 1 and role == "assistant"
        if isinstance(content, list):
            _check_blocks(f"messages.{i}.content", content, role=role)
        elif not isinstance(content, str):
            raise _invalid(f"messages.{i}.content: Input should be a valid list")
        if not content and not final_assistant:
            raise _invalid(
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
    for i, message in enumerate(messages):
        used = _ids(message["content"], "tool_use", "id")
        following = messages[i + 1]["content"] if i + 1 < len(messages) else None
        missing = [u for u in used if u not in _ids(following, "tool_result", "tool_use_id")]
        if missing:
            raise _invalid(
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have "
                "a corresponding `tool_result` block in the next message."
            )
        previous = messages[i - 1]["content"] if i > 0 else None
        offered = _ids(previous, "tool_use", "id")
        content = message["content"] if isinstance(message["content"], list) else []
        for j, block in enumerate(content):
            if isinstance(block, dict) and block.get("type") == "tool_result":
                if block["tool_use_id"] not in offered:
                    raise _invalid(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` "
                        "block must have a corresponding `tool_use` block in the previous "
                        "message."
                    )


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _invalid(f"tools.{i}: Input should be a valid dictionary")
            if tool.get("type") not in (None, "custom"):
                continue  # a server tool: accepted, never called
            name = tool.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise _invalid(
                    f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                )
            if not isinstance(tool.get("input_schema"), dict):
                raise _invalid(f"tools.{i}.custom.input_schema: Field required")
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _invalid(
            "tool_choice: Input tag found using 'type' does not match any of the expected "
            "tags: 'auto', 'any', 'tool', 'none'"
        )
    if not tools and choice["type"] != "none":
        raise _invalid("tool_choice: tool_choice may only be specified while providing tools")
    if choice["type"] == "tool" and choice.get("name") not in [t.get("name") for t in tools or []]:
        raise _invalid(f"tool_choice: Tool '{choice.get('name')}' not found in provided tools")


def validate(
    body: Any, *, version: str = SAMPLING_REMOVED, count_only: bool = False
) -> dict[str, Any]:
    """Check a Messages request as API ``version`` does; returns it or raises :class:`ApiError`."""
    if not isinstance(body, dict):
        raise _invalid("body: Input should be a valid dictionary")
    sampling = ("temperature", "top_p", "top_k") if version >= SAMPLING_REMOVED else ()
    for key in body:
        if key not in _TOP_LEVEL or key in sampling:
            raise _invalid(f"{key}: Extra inputs are not permitted")
    if "model" not in body:
        raise _invalid("model: Field required")
    if not isinstance(body["model"], str):
        raise _invalid("model: Input should be a valid string")
    if not count_only:
        if "max_tokens" not in body:
            raise _invalid("max_tokens: Field required")
        max_tokens = body["max_tokens"]
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise _invalid("max_tokens: Input should be a valid integer")
        if max_tokens < 1:
            raise _invalid("max_tokens: Input should be greater than or equal to 1")
    _check_messages(body.get("messages"))
    system = body.get("system")
    if isinstance(system, list):
        _check_blocks("system", system, role="system")
        if any(b.get("type") != "text" for b in system):
            raise _invalid("system: Input should be a valid string or a list of text blocks")
    elif system is not None and not isinstance(system, str):
        raise _invalid("system: Input should be a valid string")
    _check_number(body, "temperature", 0, 1)
    _check_number(body, "top_p", 0, 1)
    _check_number(body, "top_k", 0, None)
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _invalid("stop_sequences: Input should be a valid list of strings")
        if any(not s.strip() for s in stops):
            raise _invalid("stop_sequences: each stop sequence must contain non-whitespace")
    if not isinstance(body.get("stream", False), bool):
        raise _invalid("stream: Input should be a valid boolean")
    _check_tools(body)
    return body
