"""foreman's HTTP front: every request passes here first, on raw ASGI.

For each request, in this order (``docs/adr/0008-fast-data-plane.md``):

1. accounting: it counts as in flight until its last byte is sent; it gets a
   request id (a sane incoming ``X-Request-Id`` is kept, and every answer carries
   it back), one access-log record (``foreman.access``) and its metrics
   (:mod:`foreman.control.metrics`), however it ends;
2. Ollama's browser protections, done by foreman itself (:mod:`foreman.access`):
   a foreign ``Host`` (when listening on loopback) or ``Origin`` gets 403 with
   an empty body; an allowed CORS preflight gets 204;
3. the bearer key (``FOREMAN_TOKEN``, or a user's key: :mod:`foreman.users`), for
   everything but ``/healthz``, ``/readyz``, the settings pages and, with
   ``FOREMAN_METRICS_PUBLIC=1``, ``/metrics``; the user goes into the ASGI scope as
   ``scope["foreman.user"]``. The settings pages (``/admin/`` but ``/admin/api/``)
   know a browser by its session cookie only (:mod:`foreman.users.sessions`; the
   session, or None, is ``scope["foreman.session"]``); ``/admin/api/`` takes that
   cookie too, with the session's CSRF token in ``X-CSRF-Token`` on every method but
   GET and HEAD;
4. the control plane (:mod:`foreman.control.routes`, Quart) for foreman's own paths,
   the data plane (:mod:`foreman.dataplane.native`) for Ollama's.

foreman's own errors use Ollama's shape, ``{"error": "..."}``. When foreman's
grace period ends (:meth:`Gateway.end_grace`), what is still running ends as
well as it can: Ollama's 503 if nothing was sent yet, a final error line for
an NDJSON stream.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

import trio

from .access import PREFLIGHT_HEADERS, Access, listens_on_loopback
from .control.metrics import route_label
from .control.routes import create_control_app, is_control, is_page
from .dataplane.bodies import ReadBodyFirst, drain
from .dataplane.errors import ForemanError, GateFull
from .dataplane.exchange import Exchange
from .dataplane.jsonwire import JSON_CONTENT_TYPE, error_body
from .dataplane.native import ClientGone, DataPlane, respond, retry_after, route_key
from .gateway import Gateway
from .users import SESSION_SCOPE_KEY, USER_SCOPE_KEY
from .users.sessions import cookie_value

__all__ = ["App", "create_app"]

LOGGER = logging.getLogger("foreman.app")

UNAUTHENTICATED = frozenset({"/healthz", "/readyz"})
SHUTTING_DOWN = "foreman is shutting down"
BAD_CSRF = "missing or wrong CSRF token (X-CSRF-Token)"
_SAFE = frozenset({"GET", "HEAD"})

_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_JSON = [(b"content-type", JSON_CONTENT_TYPE.encode())]
_TEXT = [(b"content-type", b"text/plain")]


class App:
    """The ASGI application for one :class:`~foreman.gateway.Gateway`."""

    def __init__(self, gw: Gateway) -> None:
        settings = gw.settings
        self.gw = gw
        # the control plane reads each body before Quart routes it (foreman.dataplane.bodies)
        self.control = ReadBodyFirst(create_control_app(gw), settings.max_body)
        self.data = DataPlane(gw)
        self.access = Access(settings.origins, check_host=listens_on_loopback(settings.listen))
        assert gw.users is not None, "open_gateway() makes the users"
        self.users = gw.users
        self.sessions = gw.users.sessions
        self._public = UNAUTHENTICATED | ({"/metrics"} if settings.metrics_public else set())
        self.metrics = gw.metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan
            await self.control(scope, receive, send)
            return
        gw = self.gw
        client = scope.get("client")
        exchange = Exchange(
            scope["method"],
            scope["path"],
            trio.current_time(),
            client=client[0] if client else "-",
        )
        request_id = b""

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.response_started = True
                exchange.first_byte = trio.current_time()
                headers = message.get("headers", [])
                message = {**message, "headers": [*headers, (b"x-request-id", request_id)]}
            elif not message.get("more_body", False):
                exchange.response_complete = True
            await send(message)

        gw.in_flight.value += 1
        gw.live.add(exchange)
        try:
            headers = _RequestHeaders(scope["headers"])
            request_id = headers.request_id or secrets.token_hex(8).encode()
            exchange.request_id = request_id.decode()
            await self._serve(exchange, scope, receive, tracked_send, headers)
        finally:
            gw.live.discard(exchange)
            gw.in_flight.value -= 1
            now = trio.current_time()
            self.metrics.observe(exchange, exchange.route, now)
            exchange.log(now)

    async def _serve(
        self, exchange: Exchange, scope: Any, receive: Any, send: Any, headers: _RequestHeaders
    ) -> None:
        host, origin, connection = headers.host, headers.origin, headers.connection
        extra: list[tuple[bytes, bytes]] = []
        if b"close" in connection or (
            scope.get("http_version") == "1.0" and b"keep-alive" not in connection
        ):
            extra.append((b"connection", b"close"))  # the server then closes after the answer

        if not self.access.host_allowed(host):
            await respond(send, 403, b"", headers=await _drained(receive, extra))
            return
        if origin is not None:
            if not self.access.origin_allowed(origin, host):
                await respond(send, 403, b"", headers=await _drained(receive, extra))
                return
            if not self.access.same_origin(origin, host):
                extra += [
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"vary", b"Origin"),
                ]
                if scope["method"] == "OPTIONS":
                    await respond(send, 204, b"", headers=extra + PREFLIGHT_HEADERS)
                    return

        path = scope["path"]
        if is_page(path):  # the settings pages: a browser session, never a bearer key
            session = await self.sessions.find(cookie_value(headers.cookie))
            scope[SESSION_SCOPE_KEY] = session
            if session is not None:
                exchange.user = session.user.name
                scope[USER_SCOPE_KEY] = session.user
        elif path not in self._public:
            user = self.users.authenticate(headers.authorization)
            if user is None and self.users.shared:  # made on another replica a moment ago?
                user = await self.users.fetch(headers.authorization)
            if user is None and path.startswith("/admin/api/"):  # the pages' own calls
                session = await self.sessions.find(cookie_value(headers.cookie))
                if session is not None:
                    if scope["method"] not in _SAFE and not session.csrf_ok(headers.csrf):
                        exchange.outcome = "error"
                        headers = _JSON + await _drained(receive, extra)
                        await respond(send, 403, error_body(BAD_CSRF), headers=headers)
                        return
                    user = session.user
            if user is None:
                exchange.outcome = "error"
                headers = [*_JSON, (b"www-authenticate", b"Bearer")]
                headers += await _drained(receive, extra)
                await respond(send, 401, error_body("unauthorized"), headers=headers)
                return
            exchange.user = user.name
            scope[USER_SCOPE_KEY] = user
        if is_control(path):
            exchange.route = route_label(path)
            await self.control(scope, receive, send)
            return
        key = route_key(path)
        exchange.route = route_label(key)
        if key is None:
            headers = _TEXT + await _drained(receive, extra)
            await respond(send, 404, b"404 page not found", headers=headers)
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


async def _drained(receive: Any, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``extra`` once the unread request body is read (:func:`foreman.dataplane.bodies.drain`), with
    ``Connection: close`` added if it could not be read to its end."""
    if await drain(receive) or (b"connection", b"close") in extra:
        return extra
    return [*extra, (b"connection", b"close")]


class _RequestHeaders:
    """The request headers the front reads, found in one pass (names come lower-cased)."""

    __slots__ = ("authorization", "connection", "cookie", "csrf", "host", "origin", "request_id")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.host = self.origin = None
        self.authorization: bytes | None = None
        self.cookie: bytes | None = None
        self.csrf: bytes | None = None
        self.connection = self.request_id = b""
        for name, value in raw:
            if name == b"host":
                self.host = value.decode("latin-1")
            elif name == b"origin":
                self.origin = value.decode("latin-1")
            elif name == b"authorization":
                self.authorization = value
            elif name == b"connection":
                self.connection = value.lower()
            elif name == b"cookie":
                self.cookie = value if self.cookie is None else self.cookie + b"; " + value
            elif name == b"x-csrf-token":
                self.csrf = value
            elif name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                self.request_id = value  # a caller's id is kept, if it is a sane one


def create_app(gw: Gateway) -> App:
    """The ASGI app serving ``gw``: data plane, control plane and their common front."""
    return App(gw)
