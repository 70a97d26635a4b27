"""The OpenAI stand-in itself: state, routes and the ASGI app (see the package)."""

from __future__ import annotations

import base64
import collections
import json
import secrets
import struct
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx2
import trio

from ..ollama import ASGIStreamTransport
from .asgi import _json, _lifespan, _read_body, _send, _send_data, _unless_disconnected
from .reply import chunks, completion, embedding, plan
from .validation import (
    DEFAULT_MODELS,
    DEFAULT_REPLY,
    FAULTS,
    MODEL_CREATED,
    ApiError,
    _Aborted,
    _invalid,
    _random_id,
    _words,
    validate,
)

# --- the stand-in -------------------------------------------------------------------------


def _mask(key: str) -> str:
    return key if len(key) <= 8 else key[:3] + "*" * (len(key) - 7) + key[-4:]


class OpenAIStandIn:
    """A fake ``api.openai.com`` (see the module docstring for what it serves).

    Args:
        api_key: the one key accepted (as ``Authorization: Bearer``).
        models: the model ids it knows, as ``GET /v1/models`` lists them; those
            containing ``embedding`` are embedding models.
        reply: the content of every text reply, streamed one word per delta.
        tool_preamble: content sent before a tool call ("" for none, as usual).

    Faults (set them as attributes, or over ``POST /_standin/faults``):
        overloaded, rate_limited, delay, die_after, fail_midstream (see the module
        docstring); and ``reachable``: False makes :meth:`transport` refuse
        connections (``httpx2.ConnectError``), as a host that is down does.

    Statistics (``/_standin/`` requests are not counted):
        requests: every request, in order, as a dict of ``method``, ``path``,
            ``query``, ``headers`` (lower-cased names) and ``body`` (the parsed JSON,
            or None if the body is empty or not JSON).
        counts: ``"POST /v1/chat/completions"`` -> number of requests.
        errors: error code or type (``"rate_limit_exceeded"``, ``"server_error"``...)
            -> number of error answers, in-stream errors included.
        in_flight, max_in_flight, generations_total: ``POST /v1/chat/completions``
            requests past authentication, each counted until its response ended or its
            client went away.
        streams_total: those that asked for a stream.
    """

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        models: list[str] | tuple[str, ...] = DEFAULT_MODELS,
        reply: str = DEFAULT_REPLY,
        tool_preamble: str = "",
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self.reply = reply
        self.tool_preamble = tool_preamble
        self.reachable = True
        self.overloaded: int = 0
        self.rate_limited: int = 0
        self.delay: float = 0.0
        self.die_after: int | None = None
        self.fail_midstream: bool = False
        self.requests: list[dict[str, Any]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.in_flight = self.max_in_flight = self.generations_total = self.streams_total = 0

    # --- knobs and statistics -------------------------------------------------------------

    @property
    def last_body(self) -> Any:
        """The parsed JSON body of the most recent request."""
        return self.requests[-1]["body"]

    def transport(self, nursery: trio.Nursery) -> httpx2.AsyncBaseTransport:
        """An in-process httpx2 transport to :attr:`app`, refusing connections while
        :attr:`reachable` is False. ``nursery`` runs the requests; it must outlive them."""
        return ASGIStreamTransport(self.app, nursery, reachable=lambda: self.reachable)

    def faults(self) -> dict[str, Any]:
        """The current faults, by name."""
        return {name: getattr(self, name) for name in FAULTS}

    def set_faults(self, faults: Any) -> None:
        """Replace every fault: named ones from ``faults``, the rest back to defaults.

        Raises:
            ValueError: ``faults`` is not an object of known names with fitting values.
        """
        if not isinstance(faults, dict):
            raise ValueError("faults must be a JSON object")
        for name, value in faults.items():
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}")
            number = isinstance(value, int | float) and not isinstance(value, bool)
            ok = {
                "overloaded": isinstance(value, int) and number and value >= 0,
                "rate_limited": isinstance(value, int) and number and value >= 0,
                "delay": number and value >= 0,
                "die_after": value is None or (isinstance(value, int) and number and value >= 0),
                "fail_midstream": isinstance(value, bool),
            }[name]
            if not ok:
                raise ValueError(f"bad value for {name}: {value!r}")
        for name, default in FAULTS.items():
            setattr(self, name, faults.get(name, default))

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot of the statistics and faults."""
        return {
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "generations_total": self.generations_total,
            "streams_total": self.streams_total,
            "counts": dict(self.counts),
            "errors": dict(self.errors),
            "faults": self.faults(),
            "requests": self.requests,
        }

    def reset(self) -> None:
        """Clear the faults and the statistics (the maximum restarts from what is in flight)."""
        self.set_faults({})
        self.requests = []
        self.counts.clear()
        self.errors.clear()
        self.generations_total = self.streams_total = 0
        self.max_in_flight = self.in_flight

    # --- ASGI -----------------------------------------------------------------------------

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI 3 application."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = await _read_body(receive)
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if path.startswith("/_standin/"):
            await self._control(send, method, path, body)
            return
        request_id = "req_" + secrets.token_hex(16)
        query = scope.get("query_string", b"").decode("latin-1")
        self.requests.append(
            {"method": method, "path": path, "query": query, "headers": headers, "body": body}
        )
        self.counts[f"{method} {path}"] += 1
        route = path.removeprefix("/v1")
        try:
            self._authenticate(headers)
            if route == "/chat/completions" and method == "POST":
                await self._chat(send, receive, body, request_id)
            elif route == "/embeddings" and method == "POST":
                await _send(send, 200, self._embeddings(body), request_id)
            elif route == "/models" and method == "GET":
                listing = {"object": "list", "data": [self._model(m) for m in self.models]}
                await _send(send, 200, listing, request_id)
            elif route.startswith("/models/") and method == "GET":
                await _send(send, 200, self._model(route.removeprefix("/models/")), request_id)
            elif route in ("/chat/completions", "/embeddings", "/models"):
                raise ApiError(405, f"Invalid method for URL ({method} {path})")
            else:
                raise ApiError(404, f"Invalid URL ({method} {path})")
        except ApiError as error:
            self.errors[error.code or error.kind] += 1
            await _send(send, error.status, error.body(), request_id, error.headers)

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
        tokens = sum(_words(t) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _chat(self, send: Any, receive: Any, body: Any, request_id: str) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.generations_total += 1
        try:
            validate(body)
            model = body["model"]
            self._model(model, embeddings=False)
            if body.get("stream"):
                self.streams_total += 1
            if self.rate_limited > 0:
                self.rate_limited -= 1
                raise ApiError(
                    429,
                    f"Rate limit reached for {model} in organization org-standin on requests "
                    "per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s. Visit "
                    "https://platform.openai.com/account/rate-limits to learn more.",
                    kind="requests",
                    code="rate_limit_exceeded",
                    headers={"retry-after": "1"},
                )
            if self.overloaded > 0:
                self.overloaded -= 1
                raise ApiError(
                    503,
                    "The engine is currently overloaded, please try again later",
                    kind="server_error",
                )
            answer = plan(body, self.reply, self.tool_preamble)
            completion_id = _random_id("chatcmpl-", 29)
            created = int(time.time())
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                stream = chunks(answer, model, completion_id, created, include_usage=include_usage)
                await self._stream(send, receive, stream, request_id)
                return
            pause = partial(trio.sleep, self.delay * answer.completion_tokens)
            if not await _unless_disconnected(receive, pause):
                return
            if self.die_after is not None:
                raise _Aborted("stand-in fault: connection aborted before the response")
            await _send(send, 200, completion(answer, model, completion_id, created), request_id)
        finally:
            self.in_flight -= 1

    async def _stream(
        self,
        send: Any,
        receive: Any,
        stream: Iterator[tuple[bool, dict[str, Any]]],
        request_id: str,
    ) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-request-id", request_id.encode()),
            (b"openai-processing-ms", b"1"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        died = False

        async def write() -> None:
            nonlocal died
            for sent, (is_delta, data) in enumerate([*stream, (False, None)]):
                if is_delta:
                    await trio.sleep(self.delay)
                if self.die_after is not None and sent >= self.die_after:
                    died = True
                    return
                await _send_data(send, "[DONE]" if data is None else _json(data))
                if self.fail_midstream and is_delta:
                    self.errors["server_error"] += 1
                    error = ApiError(
                        500,
                        "The server had an error while processing your request. Sorry about that!",
                        kind="server_error",
                    )
                    await _send_data(send, _json(error.body()))
                    return

        if not await _unless_disconnected(receive, write):
            return
        if died:
            raise _Aborted("stand-in fault: connection aborted mid-stream")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _control(self, send: Any, method: str, path: str, body: Any) -> None:
        if (method, path) == ("POST", "/_standin/faults"):
            try:
                self.set_faults(body)
            except ValueError as exc:
                await _send(send, 400, {"error": str(exc)}, "")
                return
        elif (method, path) == ("POST", "/_standin/reset"):
            self.reset()
        elif (method, path) != ("GET", "/_standin/stats"):
            await _send(send, 404, {"error": "not found"}, "")
            return
        await _send(send, 200, self.stats(), "")
