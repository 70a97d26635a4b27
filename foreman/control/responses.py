"""JSON answers of the control plane (Quart), written as Ollama writes JSON."""

from __future__ import annotations

from typing import Any

from quart import Response

from ..dataplane.jsonwire import JSON_CONTENT_TYPE, dumps

__all__ = ["error_response", "json_response"]


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``value`` as JSON (:mod:`foreman.dataplane.jsonwire`), ``status`` and extra ``headers``."""
    return Response(dumps(value), status=status, content_type=JSON_CONTENT_TYPE, headers=headers)


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    """Ollama's error shape, ``{"error": message}``."""
    return json_response({"error": message}, status, headers)
