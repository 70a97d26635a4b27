"""The OpenAI stand-in itself: its routes on the cloud stand-ins' shell (see the package)."""

from __future__ import annotations

import base64
import secrets
import struct
import time
from functools import partial
from typing import Any

from ..cloud import CloudStandIn, Reply, Request, json_text, random_id, words
from .reply import chunks, completion, embedding, plan
from .validation import (
    DEFAULT_MODELS,
    DEFAULT_REPLY,
    MODEL_CREATED,
    ApiError,
    _invalid,
    validate,
)

# --- the stand-in -------------------------------------------------------------------------


def _mask(key: str) -> str:
    return key if len(key) <= 8 else key[:3] + "*" * (len(key) - 7) + key[-4:]


class OpenAIStandIn(CloudStandIn):
    """A fake ``api.openai.com`` (see the module docstring for what it serves).

    Args:
        api_key: the one key accepted (as ``Authorization: Bearer``).
        models: the model ids it knows, as ``GET /v1/models`` lists them; those
            containing ``embedding`` are embedding models (default :data:`DEFAULT_MODELS`).
        reply: the content of every text reply, streamed one word per delta.
        tool_preamble: content sent before a tool call ("" for none, as usual).

    Faults and statistics are :class:`~foreman.standins.cloud.CloudStandIn`'s: the
    generations counted in flight are ``POST /v1/chat/completions`` requests, ``errors``
    counts error answers by code, or type if none (``"rate_limit_exceeded"``,
    ``"server_error"``...).
    """

    DEFAULT_MODELS = DEFAULT_MODELS
    DEFAULT_REPLY = DEFAULT_REPLY
    ID_HEADER = b"x-request-id"
    JSON_HEADERS = ((b"openai-version", b"2020-10-01"),)
    STREAM_HEADERS = ((b"openai-processing-ms", b"1"),)

    # --- OpenAI's answers -----------------------------------------------------------------

    def _request_id(self) -> str:
        return "req_" + secrets.token_hex(16)

    async def _route(self, send: Any, receive: Any, request: Request) -> None:
        method, path, body = request.method, request.path, request.body
        route = path.removeprefix("/v1")
        self._authenticate(request.headers)
        if route == "/chat/completions" and method == "POST":
            check, answer = partial(self._check, body), partial(self._answer, body)
            await self._generate(send, receive, request, check, answer)
        elif route == "/embeddings" and method == "POST":
            await self._send(send, 200, self._embeddings(body), request.id)
        elif route == "/models" and method == "GET":
            listing = {"object": "list", "data": [self._model(m) for m in self.models]}
            await self._send(send, 200, listing, request.id)
        elif route.startswith("/models/") and method == "GET":
            await self._send(send, 200, self._model(route.removeprefix("/models/")), request.id)
        elif route in ("/chat/completions", "/embeddings", "/models"):
            raise ApiError(405, f"Invalid method for URL ({method} {path})")
        else:
            raise ApiError(404, f"Invalid URL ({method} {path})")

    def _authenticate(self, headers: dict[str, str]) -> None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username. You can obtain an API key "
                "from https://platform.openai.com/account/api-keys.",
            )
        if key.strip() != self.api_key:
            raise ApiError(
                401,
                f"Incorrect API key provided: {_mask(key.strip())}. You can find your API key "
                "at https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _model(self, model_id: str, *, embeddings: bool | None = None) -> dict[str, Any]:
        if model_id not in self.models:
            raise ApiError(
                404,
                f"The model `{model_id}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if embeddings is False and "embedding" in model_id:
            raise ApiError(
                404,
                "This is not a chat model and thus not supported in the v1/chat/completions "
                "endpoint. Did you mean to use v1/completions?",
            )
        if embeddings is True and "embedding" not in model_id:
            raise ApiError(
                404, f"This model does not support embeddings: {model_id}", code="model_not_found"
            )
        return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}

    def _embeddings(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise _invalid("you must provide a model parameter")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise _invalid(
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference."
            )
        self._model(body["model"], embeddings=True)
        dimensions = body.get("dimensions") or 8
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise _invalid(
                "Invalid 'dimensions': expected an integer >= 1.", "dimensions", "invalid_value"
            )
        base64_format = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector: Any = embedding(text, dimensions)
            if base64_format:
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = sum(words(t) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _check(self, body: Any) -> str:
        validate(body)
        self._model(body["model"], embeddings=False)
        return str(body["model"])

    def _answer(self, body: dict[str, Any]) -> Reply:
        answer = plan(body, self.reply, self.tool_preamble)
        model, completion_id, created = body["model"], random_id("chatcmpl-", 29), int(time.time())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stream = chunks(answer, model, completion_id, created, include_usage=include_usage)
        frames = [(is_delta, f"data: {json_text(data)}\n\n") for is_delta, data in stream]
        frames.append((False, "data: [DONE]\n\n"))
        whole = completion(answer, model, completion_id, created)
        return Reply(whole, frames, answer.completion_tokens)

    def _rate_limit_error(self, model: str) -> ApiError:
        return ApiError(
            429,
            f"Rate limit reached for {model} in organization org-standin on requests "
            "per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            kind="requests",
            code="rate_limit_exceeded",
            headers={"retry-after": "1"},
        )

    def _overload_error(self) -> ApiError:
        return ApiError(
            503, "The engine is currently overloaded, please try again later", kind="server_error"
        )

    def _midstream_error(self) -> tuple[str, str]:
        error = ApiError(
            500,
            "The server had an error while processing your request. Sorry about that!",
            kind="server_error",
        )
        return "server_error", f"data: {json_text(error.body())}\n\n"
