"""foreman's HTTP front: every request passes here first, on raw ASGI.

For each request, in this order (``docs/adr/0008-fast-data-plane.md``):

1. accounting: it counts as in flight until its last byte is sent, and it
   gets one access-log line (``foreman.access``) however it ends;
2. Ollama's browser protections, done by foreman itself (:mod:`foreman.access`):
   a foreign ``Host`` (when listening on loopback) or ``Origin`` gets 403 with
   an empty body; an allowed CORS preflight gets 204;
3. the bearer token (``FOREMAN_TOKEN``), for everything but ``/healthz`` and ``/readyz``;
4. the control plane (:mod:`foreman.control`, Quart) for foreman's own paths,
   the data plane (:mod:`foreman.dataplane`) for Ollama's.

foreman's own errors use Ollama's shape, ``{"error": "..."}``. When foreman's
grace period ends (:meth:`Gateway.end_grace`), what is still running ends as
well as it can: Ollama's 503 if nothing was sent yet, a final error line for
an NDJSON stream.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import trio

from .access import PREFLIGHT_HEADERS, Access, listens_on_loopback
from .control import CONTROL_PATHS, create_control_app
from .dataplane import ClientGone, DataPlane, respond, retry_after, route_key
from .errors import ForemanError, GateFull
from .exchange import Exchange
from .gateway import Gateway
from .jsonwire import JSON_CONTENT_TYPE, error_body

__all__ = ["App", "create_app"]

LOGGER = logging.getLogger("foreman.app")

UNAUTHENTICATED = frozenset({"/healthz", "/readyz"})
SHUTTING_DOWN = "foreman is shutting down"

_JSON = [(b"content-type", JSON_CONTENT_TYPE.encode())]
_TEXT = [(b"content-type", b"text/plain")]


class App:
    """The ASGI application for one :class:`~foreman.gateway.Gateway`."""

    def __init__(self, gw: Gateway) -> None:
        settings = gw.settings
        self.gw = gw
        self.control = create_control_app(gw)
        self.data = DataPlane(gw)
        self.access = Access(settings.origins, check_host=listens_on_loopback(settings.listen))
        self._token = settings.token.encode() if settings.token else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan
            await self.control(scope, receive, send)
            return
        gw = self.gw
        exchange = Exchange(scope["method"], scope["path"], trio.current_time())

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.response_started = True
            elif not message.get("more_body", False):
                exchange.response_complete = True
            await send(message)

        gw.in_flight.value += 1
        gw.live.add(exchange)
        try:
            await self._serve(exchange, scope, receive, tracked_send)
        finally:
            gw.live.discard(exchange)
            gw.in_flight.value -= 1
            exchange.log()

    async def _serve(self, exchange: Exchange, scope: Any, receive: Any, send: Any) -> None:
        host = origin = authorization = None
        connection = b""
        for name, value in scope["headers"]:  # ASGI servers lower-case header names
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value
            elif name == b"connection":
                connection = value.lower()
        extra: list[tuple[bytes, bytes]] = []
        if b"close" in connection or (
            scope.get("http_version") == "1.0" and b"keep-alive" not in connection
        ):
            extra.append((b"connection", b"close"))  # hypercorn then closes after the answer

        if not self.access.host_allowed(host):
            await respond(send, 403, b"", headers=extra)
            return
        if origin is not None:
            if not self.access.origin_allowed(origin, host):
                await respond(send, 403, b"", headers=extra)
                return
            if not self.access.same_origin(origin, host):
                extra += [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
                if scope["method"] == "OPTIONS":
                    await respond(send, 204, b"", headers=extra + PREFLIGHT_HEADERS)
                    return

        path = scope["path"]
        if self._token is not None and path not in UNAUTHENTICATED and not self._authorized(authorization):
            exchange.outcome = "error"
            headers = [*_JSON, (b"www-authenticate", b"Bearer"), *extra]
            await respond(send, 401, error_body("unauthorized"), headers=headers)
            return
        if path in CONTROL_PATHS:
            await self.control(scope, receive, send)
            return
        key = route_key(path)
        if key is None:
            await respond(send, 404, b"404 page not found", headers=_TEXT + extra)
            return

        error: ForemanError | None = None
        with exchange.cancel_scope:
            try:
                await self.data.handle(exchange, scope, receive, send, key, extra)
            except ForemanError as exc:
                error = exc
            except ClientGone:
                exchange.outcome = "cancelled"
            except Exception:
                LOGGER.exception("unhandled error in %s %s", scope["method"], path)
                error = ForemanError("foreman: internal error")
        if error is not None:
            exchange.outcome = "busy" if isinstance(error, GateFull) else "error"
            if not exchange.response_started:
                headers = _JSON + retry_after(error, self.gw.settings.poll_interval) + extra
                await respond(send, error.status_code, error_body(error.message), headers=headers)
        elif exchange.shutdown and exchange.cancel_scope.cancelled_caught:
            await self._end_at_shutdown(exchange, send, extra)

    async def _end_at_shutdown(self, exchange: Exchange, send: Any, extra: Any) -> None:
        """foreman's grace period cut this request: tell the client as well as it can be told."""
        exchange.outcome = "shutdown"
        if not exchange.response_started:
            await respond(send, 503, error_body(GateFull().message), headers=_JSON + extra)
        elif exchange.ndjson and not exchange.response_complete:
            line = error_body(SHUTTING_DOWN) + b"\n"
            await send({"type": "http.response.body", "body": line, "more_body": False})

    def _authorized(self, authorization: bytes | None) -> bool:
        scheme, _, given = (authorization or b"").partition(b" ")
        assert self._token is not None
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)


def create_app(gw: Gateway) -> App:
    """The ASGI app serving ``gw``: data plane, control plane and their common front."""
    return App(gw)
