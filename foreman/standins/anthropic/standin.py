"""The Anthropic stand-in itself: its routes on the cloud stand-ins' shell (see the package)."""

from __future__ import annotations

from functools import partial
from typing import Any

from ..cloud import CloudStandIn, Reply, Request, json_text, random_id
from .reply import events, input_tokens, message, plan
from .validation import (
    _API_VERSION,
    DEFAULT_MODELS,
    DEFAULT_REPLY,
    MODEL_CREATED_AT,
    ApiError,
    _invalid,
    display_name,
    validate,
)

# --- the stand-in -------------------------------------------------------------------------


class AnthropicStandIn(CloudStandIn):
    """A fake ``api.anthropic.com`` (see the module docstring for what it serves).

    Args:
        api_key: the one key accepted (as ``x-api-key`` or ``Authorization: Bearer``).
        models: the model ids it knows, newest first, as ``GET /v1/models`` lists them
            (default :data:`DEFAULT_MODELS`).
        reply: the text of every text reply, streamed one word per delta.
        tool_preamble: text sent before a ``tool_use`` block ("" for none).

    Faults and statistics are :class:`~foreman.standins.cloud.CloudStandIn`'s: the
    generations counted in flight are ``POST /v1/messages`` requests, ``errors`` counts
    error answers by type (``"overloaded_error"``...).
    """

    DEFAULT_MODELS = DEFAULT_MODELS
    DEFAULT_REPLY = DEFAULT_REPLY
    ID_HEADER = b"request-id"

    # --- Anthropic's answers --------------------------------------------------------------

    def _request_id(self) -> str:
        return random_id("req_011", 21)

    async def _route(self, send: Any, receive: Any, request: Request) -> None:
        method, path, headers, body = request.method, request.path, request.headers, request.body
        self._authenticate(headers)
        version = headers.get("anthropic-version", "")
        if not version:
            raise _invalid("anthropic-version: header is required")
        if not _API_VERSION.match(version):
            raise _invalid(f"anthropic-version: unknown version {version}")
        if request.raw and body is None:
            raise _invalid("There was an error parsing the body of your request")
        if path == "/v1/messages" and method == "POST":
            check, answer = partial(self._check, body, version), partial(self._answer, body)
            await self._generate(send, receive, request, check, answer)
        elif path == "/v1/messages/count_tokens" and method == "POST":
            validate(body, version=version, count_only=True)
            self._model(body["model"])
            counted = {"input_tokens": input_tokens(body)}
            await self._send(send, 200, counted, request.id)
        elif path == "/v1/models" and method == "GET":
            await self._send(send, 200, self._list_models(request.query), request.id)
        elif path.startswith("/v1/models/") and method == "GET":
            model = self._model(path.removeprefix("/v1/models/"))
            await self._send(send, 200, model, request.id)
        else:
            raise ApiError(404, "not_found_error", "Not Found")

    def _authenticate(self, headers: dict[str, str]) -> None:
        key = headers.get("x-api-key")
        if key is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            key = token if scheme.lower() == "bearer" else None
        if key is None:
            raise ApiError(401, "authentication_error", "x-api-key header is required")
        if key != self.api_key:
            raise ApiError(401, "authentication_error", "invalid x-api-key")

    def _model(self, model_id: str) -> dict[str, Any]:
        if model_id not in self.models:
            raise ApiError(404, "not_found_error", f"model: {model_id}")
        return {
            "type": "model",
            "id": model_id,
            "display_name": display_name(model_id),
            "created_at": MODEL_CREATED_AT,
        }

    def _list_models(self, query: str) -> dict[str, Any]:
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        ids = self.models
        if params.get("after_id") in ids:
            ids = ids[ids.index(params["after_id"]) + 1 :]
        if params.get("before_id") in ids:
            ids = ids[: ids.index(params["before_id"])]
        try:
            limit = int(params.get("limit", "20"))
        except ValueError:
            raise _invalid("limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise _invalid("limit: Input should be between 1 and 1000")
        page = [self._model(i) for i in ids[:limit]]
        return {
            "data": page,
            "has_more": len(ids) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }

    def _check(self, body: Any, version: str) -> str:
        validate(body, version=version)
        self._model(body["model"])
        return str(body["model"])

    def _answer(self, body: dict[str, Any]) -> Reply:
        answer = plan(body, self.reply, self.tool_preamble)
        model, message_id = body["model"], random_id("msg_01")
        frames = (
            (name == "content_block_delta", f"event: {name}\ndata: {json_text(data)}\n\n")
            for name, data in events(answer, model, message_id)
        )
        deltas = sum(len(b.pieces) for b in answer.blocks)
        return Reply(message(answer, model, message_id), frames, deltas)

    def _rate_limit_error(self, model: str) -> ApiError:
        return ApiError(
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of "
            "50 requests per minute. Please try again later.",
            {"retry-after": "1"},
        )

    def _overload_error(self) -> ApiError:
        return ApiError(529, "overloaded_error", "Overloaded")

    def _midstream_error(self) -> tuple[str, str]:
        error = {"type": "overloaded_error", "message": "Overloaded"}
        return (
            "overloaded_error",
            f"event: error\ndata: {json_text({'type': 'error', 'error': error})}\n\n",
        )
