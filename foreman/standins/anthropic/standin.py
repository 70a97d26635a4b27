"""The Anthropic stand-in itself: state, routes and the ASGI app (see the package)."""

from __future__ import annotations

import collections
import json
from functools import partial
from typing import Any

import httpx2
import trio

from ..ollama import ASGIStreamTransport
from .asgi import _lifespan, _read_body, _send, _send_event, _unless_disconnected
from .reply import Plan, events, input_tokens, message, plan
from .validation import (
    _API_VERSION,
    DEFAULT_MODELS,
    DEFAULT_REPLY,
    FAULTS,
    MODEL_CREATED_AT,
    ApiError,
    _Aborted,
    _invalid,
    _random_id,
    display_name,
    validate,
)

# --- the stand-in -------------------------------------------------------------------------


class AnthropicStandIn:
    """A fake ``api.anthropic.com`` (see the module docstring for what it serves).

    Args:
        api_key: the one key accepted (as ``x-api-key`` or ``Authorization: Bearer``).
        models: the model ids it knows, newest first, as ``GET /v1/models`` lists them.
        reply: the text of every text reply, streamed one word per delta.
        tool_preamble: text sent before a ``tool_use`` block ("" for none).

    Faults (set them as attributes, or over ``POST /_standin/faults``):
        overloaded, rate_limited, delay, die_after, fail_midstream (see the module
        docstring); and ``reachable``: False makes :meth:`transport` refuse
        connections (``httpx2.ConnectError``), as a host that is down does.

    Statistics (``/_standin/`` requests are not counted):
        requests: every request, in order, as a dict of ``method``, ``path``,
            ``query``, ``headers`` (lower-cased names) and ``body`` (the parsed JSON,
            or None if the body is empty or not JSON).
        counts: ``"POST /v1/messages"`` -> number of requests.
        errors: error type (``"overloaded_error"``...) -> number of error answers,
            in-stream errors included.
        in_flight, max_in_flight, generations_total: ``POST /v1/messages`` requests
            past authentication, each counted until its response ended or its
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
        request_id = _random_id("req_011", 21)
        query = scope.get("query_string", b"").decode("latin-1")
        self.requests.append(
            {"method": method, "path": path, "query": query, "headers": headers, "body": body}
        )
        self.counts[f"{method} {path}"] += 1
        try:
            self._authenticate(headers)
            version = headers.get("anthropic-version", "")
            if not version:
                raise _invalid("anthropic-version: header is required")
            if not _API_VERSION.match(version):
                raise _invalid(f"anthropic-version: unknown version {version}")
            if raw and body is None:
                raise _invalid("There was an error parsing the body of your request")
            if path == "/v1/messages" and method == "POST":
                await self._messages(send, receive, body, version, request_id)
            elif path == "/v1/messages/count_tokens" and method == "POST":
                validate(body, version=version, count_only=True)
                self._model(body["model"])
                answer = {"input_tokens": input_tokens(body)}
                await _send(send, 200, answer, request_id)
            elif path == "/v1/models" and method == "GET":
                await _send(send, 200, self._list_models(query), request_id)
            elif path.startswith("/v1/models/") and method == "GET":
                model = self._model(path.removeprefix("/v1/models/"))
                await _send(send, 200, model, request_id)
            else:
                raise ApiError(404, "not_found_error", "Not Found")
        except ApiError as error:
            self.errors[error.kind] += 1
            answer = {
                "type": "error",
                "error": {"type": error.kind, "message": error.message},
                "request_id": request_id,
            }
            await _send(send, error.status, answer, request_id, error.headers)

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

    async def _messages(
        self, send: Any, receive: Any, body: Any, version: str, request_id: str
    ) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.generations_total += 1
        try:
            validate(body, version=version)
            model = body["model"]
            self._model(model)
            if body.get("stream"):
                self.streams_total += 1
            if self.rate_limited > 0:
                self.rate_limited -= 1
                raise ApiError(
                    429,
                    "rate_limit_error",
                    "This request would exceed the rate limit for your organization of "
                    "50 requests per minute. Please try again later.",
                    {"retry-after": "1"},
                )
            if self.overloaded > 0:
                self.overloaded -= 1
                raise ApiError(529, "overloaded_error", "Overloaded")
            answer = plan(body, self.reply, self.tool_preamble)
            message_id = _random_id("msg_01")
            if body.get("stream"):
                await self._stream(send, receive, answer, model, message_id, request_id)
                return
            pause = partial(trio.sleep, self.delay * sum(len(b.pieces) for b in answer.blocks))
            if not await _unless_disconnected(receive, pause):
                return
            if self.die_after is not None:
                raise _Aborted("stand-in fault: connection aborted before the response")
            await _send(send, 200, message(answer, model, message_id), request_id)
        finally:
            self.in_flight -= 1

    async def _stream(
        self, send: Any, receive: Any, answer: Plan, model: str, message_id: str, request_id: str
    ) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"request-id", request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        died = False

        async def write() -> None:
            nonlocal died
            for sent, (name, data) in enumerate(events(answer, model, message_id)):
                if name == "content_block_delta":
                    await trio.sleep(self.delay)
                if self.die_after is not None and sent >= self.die_after:
                    died = True
                    return
                await _send_event(send, name, data)
                if self.fail_midstream and name == "content_block_delta":
                    self.errors["overloaded_error"] += 1
                    error = {"type": "overloaded_error", "message": "Overloaded"}
                    await _send_event(send, "error", {"type": "error", "error": error})
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
