"""foreman's HTTP surface: native Ollama, byte for byte, plus /healthz and /readyz.

Routes (reference §2):

* ``POST /api/chat``, ``POST /api/generate``: the model is checked against the
  inventory (one re-poll on a miss), then the request waits at the gate and is
  relayed; NDJSON streams line by line, ``"stream": false`` answers whole.
* ``POST /api/embed``, ``POST /api/embeddings``: relayed at once, no gate.
* ``GET /api/tags``: relayed; while the target is unreachable, the last
  inventory is served instead.
* ``/`` and every other ``/api/*`` path and method: relayed as is, no gate.
* ``GET /healthz`` (liveness) and ``GET /readyz`` (503 while degraded): foreman's own.

The target's status, content type and body bytes are passed through untouched.
foreman's own errors use Ollama's shape, ``{"error": "..."}``.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from trio_util import AsyncValue
from werkzeug.exceptions import HTTPException

from .errors import ForemanError, TargetUnreachable
from .jsonwire import JSON_CONTENT_TYPE, dumps
from .names import is_cloud, normalize
from .relay import Reply, relay
from .service import Gateway

__all__ = ["InFlight", "create_app"]

ACCESS = logging.getLogger("foreman.access")
LOGGER = logging.getLogger("foreman.app")

#: Request headers passed on to the target. Never Host or Origin: Ollama bound to
#: loopback answers 403 to a foreign Host or Origin (reference §1). Never the
#: client's Authorization: foreman sends its own (FOREMAN_OLLAMA_TOKEN).
FORWARDED_HEADERS = ("content-type", "accept", "user-agent")

UNAUTHENTICATED = frozenset({"/healthz", "/readyz"})


@dataclass
class Exchange:
    """One request, for the access log. Times are ``trio.current_time()`` seconds."""

    method: str
    path: str
    started: float
    model: str | None = None
    status: int | None = None
    gate_wait: float | None = None
    outcome: str = ""
    streaming: bool = False  # then the body's end logs it, not after_request

    def log(self) -> None:
        ACCESS.info(
            "%s %s model=%s status=%s gate_wait=%s duration=%.3fs%s",
            self.method,
            self.path,
            self.model or "-",
            self.status,
            "-" if self.gate_wait is None else f"{self.gate_wait:.3f}s",
            trio.current_time() - self.started,
            f" outcome={self.outcome}" if self.outcome else "",
        )


_OPEN_REPLIES: ContextVar[list[Reply] | None] = ContextVar("open_replies", default=None)


class InFlight:
    """ASGI middleware: counts HTTP requests until their last byte is sent, and makes sure
    a streaming reply is closed (its pump cancelled, the gate freed) when its request
    ends, even if the response body never started."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.in_flight = AsyncValue(0)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        replies: list[Reply] = []
        token = _OPEN_REPLIES.set(replies)
        self.in_flight.value += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.value -= 1
            for reply in replies:
                reply.close()
            _OPEN_REPLIES.reset(token)


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response as Ollama writes one (see :mod:`foreman.jsonwire`)."""
    return Response(dumps(value), status=status, content_type=JSON_CONTENT_TYPE, headers=headers)


def create_app(gw: Gateway) -> QuartTrio:
    """Build the Quart-trio app for ``gw``. No globals: everything comes from the gateway."""
    app = QuartTrio("foreman")
    app.config.update(
        RESPONSE_TIMEOUT=None,  # streams run as long as the target keeps talking
        MAX_CONTENT_LENGTH=None,  # chat requests may carry images
        BODY_TIMEOUT=None,  # uploads (blobs, images) may be slow; the client decides
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    settings = gw.settings
    token = settings.token.encode() if settings.token else None

    @app.before_request
    async def begin() -> Response | None:
        g.exchange = Exchange(request.method, request.path, trio.current_time())
        if token is None or request.path in UNAUTHENTICATED:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
            return None
        return json_response({"error": "unauthorized"}, 401, {"WWW-Authenticate": "Bearer"})

    @app.after_request
    async def finish(response: Response) -> Response:
        exchange: Exchange = g.exchange
        exchange.status = response.status_code
        if not exchange.streaming:
            exchange.log()
        return response

    @app.errorhandler(ForemanError)
    async def foreman_error(exc: ForemanError) -> Response:
        headers = None
        if isinstance(exc, TargetUnreachable):
            headers = {"Retry-After": str(math.ceil(min(settings.poll_interval, 30)))}
        return json_response({"error": exc.message}, exc.status_code, headers)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        # gin's own texts for an unknown route or a wrong method
        text = {404: "404 page not found", 405: "405 method not allowed"}.get(
            exc.code or 500, f"{exc.code} {exc.name}".lower()
        )
        return Response(text, status=exc.code or 500, content_type="text/plain")

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        LOGGER.exception("unhandled error in %s %s", request.method, request.path)
        return json_response({"error": f"foreman: internal error: {exc}"}, 500)

    async def forward(
        *, body: bytes | None = None, gated: bool = False, header_timeout: float | None = None
    ) -> Response:
        """Relay the current request to the target and answer with its reply."""
        if body is None:
            body = await request.get_data(cache=False)
        headers = {k: v for k in FORWARDED_HEADERS if (v := request.headers.get(k)) is not None}
        reply = await relay(
            gw.nursery,
            gw.target,
            request.method,
            request.path,
            content=body or None,
            headers=headers,
            params=request.query_string.decode() or None,
            header_timeout=header_timeout,
            gate=gw.gate if gated else None,
        )
        return respond(reply)

    def respond(reply: Reply) -> Response:
        exchange: Exchange = g.exchange
        exchange.gate_wait = reply.gate_wait
        if reply.body is not None:
            return _with_headers(Response(reply.body, status=reply.status), reply)
        exchange.streaming = True
        open_replies = _OPEN_REPLIES.get()
        if open_replies is not None:
            open_replies.append(reply)

        async def body() -> AsyncIterator[bytes]:
            assert reply.lines is not None
            try:
                async for line in reply.lines:
                    yield line
            finally:
                reply.close()
                exchange.outcome = reply.outcome
                exchange.log()

        return _with_headers(Response(body(), status=reply.status), reply)

    @app.route("/api/chat", methods=["POST"])
    @app.route("/api/generate", methods=["POST"])
    async def chat() -> Response:
        body = await request.get_data(cache=False)
        fields = _fields(body)
        model = fields.get("model")
        if not isinstance(model, str) or not model:
            # No model (or no JSON): Ollama rejects it before scheduling (400/404), so no gate.
            return await forward(body=body)
        g.exchange.model = model
        if normalize(model) is not None and not is_cloud(model):
            await gw.inventory.require(model)
        # Names foreman cannot parse still pass the gate: if Ollama can, it will run them.
        # A stream's first line must come within the idle timeout (model load included);
        # a "stream": false answer comes whole at the end, however long that takes.
        streams = fields.get("stream") is not False
        timeout = settings.idle_timeout if streams else None
        return await forward(body=body, gated=True, header_timeout=timeout)

    @app.route("/api/embed", methods=["POST"])
    @app.route("/api/embeddings", methods=["POST"])
    async def embed() -> Response:
        body = await request.get_data(cache=False)
        model = _fields(body).get("model")
        g.exchange.model = model if isinstance(model, str) else None
        gw.embeds_in_flight += 1
        try:
            return await forward(body=body)
        finally:
            gw.embeds_in_flight -= 1

    @app.route("/api/tags", methods=["GET"])
    async def tags() -> Response:
        try:
            return await forward()
        except TargetUnreachable:
            if gw.inventory.body is None:
                raise
            LOGGER.info("target unreachable: answering /api/tags from the last inventory")
            return Response(gw.inventory.body, content_type=JSON_CONTENT_TYPE)

    @app.route("/", methods=["GET", "HEAD"])
    @app.route("/api/<path:rest>", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    async def passthrough(rest: str = "") -> Response:
        return await forward()

    @app.route("/healthz", methods=["GET"])
    async def healthz() -> Response:
        return json_response(health(gw))

    @app.route("/readyz", methods=["GET"])
    async def readyz() -> Response:
        report = health(gw)
        return json_response(report, 503 if gw.inventory.degraded.value else 200)

    return app


def _with_headers(response: Response, reply: Reply) -> Response:
    """Give ``response`` exactly the target's relayed headers (Quart adds a default type)."""
    del response.headers["Content-Type"]
    for name, value in reply.headers:
        response.headers[name] = value
    return response


def _fields(body: bytes) -> dict[str, Any]:
    """A JSON request body's top-level fields, keys lower-cased (Go matches them so); else {}."""
    try:  # Go's decoder takes invalid UTF-8 (as U+FFFD), so must this
        request_json = json.loads(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return {}
    if not isinstance(request_json, dict):
        return {}
    return {key.lower(): value for key, value in request_json.items()}


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def health(gw: Gateway) -> dict[str, Any]:
    """foreman's health report (the body of /healthz and /readyz).

    Shape::

        {"status": "ok" | "degraded", "target": URL, "error": str | None,
         "last_poll": RFC 3339 UTC | None, "last_poll_age_seconds": float | None,
         "models": int, "resident": [name, ...] | None,
         "embedder": {"model", "resident", "warmups", "last_warmup", "last_error"} | None,
         "chats": {"in_flight": 0 | 1, "waiting": int, "max_waiting": int},
         "embeds_in_flight": int}
    """
    inventory, residency = gw.inventory, gw.residency
    gate = gw.gate.statistics()
    last = inventory.last_success
    embedder = None
    if residency.embed_model is not None:
        embedder = {
            "model": residency.embed_model,
            "resident": residency.embedder_resident(),
            "warmups": residency.warmups,
            "last_warmup": _timestamp(residency.last_warmup),
            "last_error": residency.last_warmup_error,
        }
    return {
        "status": "degraded" if inventory.degraded.value else "ok",
        "target": gw.target.url,
        "error": str(inventory.last_error) if inventory.degraded.value else None,
        "last_poll": _timestamp(last),
        "last_poll_age_seconds": None if last is None else round(time.time() - last, 3),
        "models": len(inventory.models),
        "resident": None if residency.resident is None else list(residency.resident),
        "embedder": embedder,
        "chats": {
            "in_flight": gate.in_flight,
            "waiting": gate.waiting,
            "max_waiting": gw.gate.max_waiting,
        },
        "embeds_in_flight": gw.embeds_in_flight,
    }
