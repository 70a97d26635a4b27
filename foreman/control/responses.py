"""JSON answers of the control plane (Quart), written as Ollama writes JSON."""

from __future__ import annotations

import json
from typing import Any

from quart import Response

from ..dataplane.jsonwire import JSON_CONTENT_TYPE, dumps

__all__ = ["error_response", "json_response", "parse_json"]


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``value`` as JSON (:mod:`foreman.dataplane.jsonwire`), ``status`` and extra ``headers``."""
    return Response(dumps(value), status=status, content_type=JSON_CONTENT_TYPE, headers=headers)


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    """Ollama's error shape, ``{"error": message}``."""
    return json_response({"error": message}, status, headers)


def parse_json(data: bytes) -> Any:
    """A control-plane request body as JSON: UTF-8, at most as deep as Python's parser
    goes, with no lone surrogate (``"\\ud800"``) in any string, which could not be stored
    or sent on.

    Raises:
        ValueError: anything else (the routes answer 400 or 422, never 500).
    """
    try:
        value = json.loads(data.decode("utf-8"))
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate fails here
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    except UnicodeError as exc:  # ValueError too, but said plainly
        raise ValueError(f"not valid UTF-8 text ({exc.reason})") from None
    return value
