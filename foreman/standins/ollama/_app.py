"""The stand-in's ASGI app: Ollama's routes (native, OpenAI's and Anthropic's faces),
middleware and gin's error pages.

Middleware (in front of every route, as gin middleware is in Ollama):

1. statistics: ``requests`` and ``last_headers`` (not for ``/_standin/``);
2. the optional bearer token of an auth proxy (401 ``{"error":"unauthorized"}``);
3. CORS and the loopback Host check (403, empty body), see :mod:`._access`;
4. a per-request :class:`Lease` whose callbacks run when the ASGI call ends,
   whatever happens, so in-flight counters and model references never leak;
5. ``HEAD`` answers keep their headers and drop the body.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import MethodNotAllowed, NotFound

from . import _access
from ._anthropic import register_anthropic
from ._faults import Faults
from ._generation import ConnectionAborted
from ._http import ABORT_KEY, LEASE_KEY, Lease, error, json_response, text
from ._inference import register_inference
from ._openai import register_openai
from ._wire import JSON, dumps

if TYPE_CHECKING:
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

    from ._standin import StandIn

__all__ = ["StandInApp", "create_app"]


class StandInApp(QuartTrio):
    """QuartTrio with the stand-in's middleware around every HTTP request."""

    standin: StandIn

    async def asgi_app(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await super().asgi_app(scope, receive, send)
            return
        standin = self.standin
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        head = method == "HEAD"
        control = path.startswith("/_standin/")
        if not control:
            await standin.wait_thawed()
            standin.requests[f"{method} {path}"] += 1
            standin.last_headers = headers
            if standin.token is not None and headers.get("authorization") != (
                f"Bearer {standin.token}"
            ):
                body = dumps({"error": "unauthorized"})
                await _raw(send, 401, [(b"content-type", JSON.encode())], body, head=head)
                return
        cors: list[tuple[bytes, bytes]] = []
        origin = headers.get("origin")
        if origin is not None and not _access.origin_allowed(origin, headers.get("host")):
            await _raw(send, 403, [], b"", head=head)
            return
        if origin is not None and not _access.same_origin(origin, headers.get("host")):
            cors = [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
            if method == "OPTIONS":
                preflight = [(k.encode(), v.encode()) for k, v in _access.CORS_HEADERS.items()]
                await _raw(send, 204, cors + preflight, b"", head=True)
                return
        allowed, by_name = _access.host_allowed(headers.get("host"))
        if not allowed:
            await _raw(send, 403, [], b"", head=head)
            return
        if by_name and method == "OPTIONS":
            await _raw(send, 204, [], b"", head=True)
            return

        scope = {**scope, LEASE_KEY: Lease(), ABORT_KEY: False}

        async def send_filtered(message: Any) -> None:
            if message["type"] == "http.response.start":
                if scope[ABORT_KEY]:
                    raise ConnectionAborted("stand-in fault: connection aborted")
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}
            await send(message)

        try:
            await super().asgi_app(scope, receive, send_filtered)
        finally:
            scope[LEASE_KEY].close()


async def _raw(
    send: ASGISendCallable,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    head: bool,
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})


def create_app(standin: StandIn) -> StandInApp:
    """Build the ASGI app serving Ollama's native API from ``standin``'s state."""
    app = StandInApp(__name__)
    app.standin = standin
    app.config.update(
        RESPONSE_TIMEOUT=None,  # streams end when they end
        BODY_TIMEOUT=None,
        MAX_CONTENT_LENGTH=None,
        PROVIDE_AUTOMATIC_OPTIONS=False,  # gin answers OPTIONS with 405
    )

    @app.errorhandler(NotFound)
    async def not_found(_: Exception) -> Response:
        path = request.path
        if path.endswith("/") and path != "/":
            try:  # gin's RedirectTrailingSlash
                app.url_map.bind("").match(path.rstrip("/"), method=request.method)
            except (NotFound, MethodNotAllowed):
                pass
            else:
                status = 301 if request.method == "GET" else 307
                return Response(b"", status, headers={"Location": path.rstrip("/")})
        return text(404, "404 page not found")

    @app.errorhandler(MethodNotAllowed)
    async def method_not_allowed(_: Exception) -> Response:
        return text(405, "405 method not allowed")

    @app.route("/", methods=["GET"])
    async def root() -> Response:
        return text(200, "Ollama is running", "text/plain; charset=utf-8")

    @app.route("/api/version", methods=["GET"])
    async def version() -> Response:
        return json_response({"version": standin.version})

    @app.route("/api/status", methods=["GET"])
    async def status() -> Response:
        return json_response({"cloud": {"disabled": False, "source": "none"}})

    @app.route("/api/tags", methods=["GET"])
    async def tags() -> Response:
        specs = sorted(standin.models.values(), key=lambda s: s.modified_at, reverse=True)
        return json_response({"models": [spec.tags_entry() for spec in specs]})

    @app.route("/api/ps", methods=["GET"])
    async def ps() -> Response:
        if request.method == "HEAD":  # werkzeug adds HEAD to GET routes; gin does not here
            return text(405, "405 method not allowed")
        runners = sorted(
            standin.scheduler.runners(), key=lambda r: (-r.expires_at, r.spec.parsed.display)
        )
        models = []
        for runner in runners:
            spec, name = runner.spec, runner.spec.parsed.display
            models.append(
                {
                    "name": name,
                    "model": name,
                    "size": spec.size,
                    "digest": spec.digest,
                    "details": spec.details(lengths=False),
                    "expires_at": standin.timestamp(runner.expires_at),
                    "size_vram": spec.size,
                    "context_length": spec.runner_context,
                }
            )
        return json_response({"models": models})

    register_inference(app, standin)
    register_openai(app, standin)
    register_anthropic(app, standin)

    @app.route("/_standin/stats", methods=["GET"])
    async def stats() -> Response:
        return json_response(standin.stats())

    @app.route("/_standin/faults", methods=["POST"])
    async def faults() -> Response:

        try:
            standin.faults = Faults.from_json(json.loads(await request.get_data() or b"{}"))
        except ValueError as exc:
            return error(400, str(exc))
        return json_response(standin.stats())

    @app.route("/_standin/freeze", methods=["POST"])
    async def freeze() -> Response:
        standin.freeze()
        return json_response(standin.stats())

    @app.route("/_standin/thaw", methods=["POST"])
    async def thaw() -> Response:
        standin.thaw()
        return json_response(standin.stats())

    @app.route("/_standin/reset", methods=["POST"])
    async def reset() -> Response:
        standin.reset_stats()
        return json_response(standin.stats())

    return app
