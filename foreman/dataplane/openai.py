"""The OpenAI face: foreman's own answers in OpenAI's shapes (as Ollama's ``openai/``).

* errors: ``{"error": {"message", "type", "param": null, "code": null}}``, ``type`` as
  ``openai.NewError`` sets it (``invalid_request_error`` for 400, ``not_found_error``
  for 404, else ``api_error``), ``Content-Type: application/json``;
* a stream foreman cannot finish (the target broke, or went quiet past the idle
  timeout) ends with ``data: {"error": {...}}`` (chat, completions: the official SDK
  raises :class:`openai.APIError` on it) or, for ``/v1/responses``, with a
  ``response.failed`` event, the event Ollama ends a failed responses stream with;
* ``GET /v1/models`` for a user who can reach more than the builtin backend:
  ``{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}``
  (``openai.ToListCompletion``), the same names ``/api/tags`` lists;
* token counts from ``usage`` (``prompt_tokens``/``completion_tokens``, or the
  responses API's ``input_tokens``/``output_tokens``).
"""

from __future__ import annotations

import calendar
import time
from typing import Any

from .jsonwire import dumps

__all__ = ["BACKEND_PATHS", "error_body", "models_body", "stream_error", "tokens"]

#: The OpenAI routes an OpenAI-compatible backend serves natively: route key → the
#: path under the backend's base URL (which ends in ``/v1``).
BACKEND_PATHS = {
    "/v1/chat/completions": "/chat/completions",
    "/v1/completions": "/completions",
    "/v1/responses": "/responses",
    "/v1/embeddings": "/embeddings",
}


def _error(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"message": message, "type": kind, "param": None, "code": None}


def error_body(status: int, message: str) -> bytes:
    """``openai.NewError(status, message)``, as ``json.Encoder`` writes it (newline)."""
    return dumps({"error": _error(status, message)}) + b"\n"


def stream_error(key: str, message: str) -> bytes:
    """The last event of an OpenAI stream that failed after its status line."""
    if key == "/v1/responses":
        response = {
            "object": "response",
            "status": "failed",
            "output": [],
            "error": {"code": "api_error", "message": message},
        }
        data = dumps({"type": "response.failed", "response": response})
        return b"event: response.failed\ndata: " + data + b"\n\n"
    return b"data: " + dumps({"error": _error(500, message)}) + b"\n\n"


def tokens(answer: Any) -> tuple[int, int] | None:
    """(in, out) from an answer's or event's ``usage``, or None when it has none."""
    if not isinstance(answer, dict):
        return None
    usage = answer.get("usage")
    if not isinstance(usage, dict) and isinstance(answer.get("response"), dict):
        usage = answer["response"].get("usage")  # response.completed
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


def models_body(entries: list[dict[str, Any]]) -> bytes:
    """``GET /v1/models`` for ``/api/tags`` entries (OpenAI's list shape, one per name)."""
    data = [model_object(entry) for entry in entries]
    return dumps({"object": "list", "data": data or None}) + b"\n"


def model_body(entries: list[dict[str, Any]], name: str) -> bytes | None:
    """``GET /v1/models/{name}``: the entry named ``name`` in OpenAI's model shape, or
    None when no entry has that name."""
    for entry in entries:
        if (entry.get("model") or entry.get("name")) == name:
            return dumps(model_object(entry)) + b"\n"
    return None


def model_object(entry: dict[str, Any]) -> dict[str, Any]:
    """One ``/api/tags`` entry as OpenAI's model object (``id``, ``object``, ``created``,
    ``owned_by``), as Ollama's ``/v1/models`` builds it."""
    name = entry.get("model") or entry.get("name") or ""
    return {
        "id": name,
        "object": "model",
        "created": _unix(entry.get("modified_at")),
        "owned_by": _owner(name, entry),
    }


def _owner(name: str, entry: dict[str, Any]) -> str:
    details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    family = details.get("family") if details else None
    if family in ("alias", "anthropic", "openai"):
        return "foreman" if family == "alias" else family
    parts = name.split("/")
    return parts[-2] if len(parts) >= 2 else "library"


def _unix(stamp: Any) -> int:
    if not isinstance(stamp, str) or len(stamp) < 19:
        return 0
    try:
        return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0
