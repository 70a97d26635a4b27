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

foreman's own errors take the face's shape (:func:`foreman.dataplane.faces.error_answer`):
Ollama's ``{"error": "..."}``, OpenAI's or Anthropic's on ``/v1/``. The key may also come
as ``x-api-key`` on ``/v1/messages`` (the Anthropic SDK's way). When foreman's
grace period ends (:meth:`Gateway.end_grace`), or foreman's own error cuts a chat (the
cluster's gate lost, ``GateLost``), what is still running ends as well as it can: the
face's 503 if nothing was sent yet, a final error line for an NDJSON stream, the face's
error event for a Server-Sent Events stream.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

import trio

from .access import PREFLIGHT_HEADERS, Access, listens_on_loopback
from .connections import trim_memory
from .control.metrics import route_label
from .control.routes import create_control_app, is_control, is_page
from .dataplane.answers import respond, retry_after
from .dataplane.bodies import (
    DRAIN_TIMEOUT,
    BodyGuard,
    BodyTimeout,
    ReadBodyFirst,
    ReadingBudget,
    ReadingFull,
    drain,
)
from .dataplane.errors import ForemanError, GateFull
from .dataplane.exchange import Exchange
from .dataplane.faces import (
    ANTHROPIC,
    EMBEDS,
    NATIVE,
    error_answer,
    face_of,
    is_gated,
    route_key,
    stream_error,
)
from .dataplane.jsonwire import JSON_CONTENT_TYPE, error_body
from .dataplane.native import ClientGone, DataPlane
from .gateway import Gateway
from .users import SESSION_SCOPE_KEY, USER_SCOPE_KEY
from .users.sessions import cookie_value

__all__ = ["App", "create_app"]

LOGGER = logging.getLogger("foreman.app")

UNAUTHENTICATED = frozenset({"/healthz", "/readyz"})
SHUTTING_DOWN = "foreman is shutting down"
#: Seconds a request cut by foreman's stop is told to wait before trying again.
SHUTDOWN_RETRY_AFTER = 5
FRAMED_TWICE = "a request may not carry both Content-Length and Transfer-Encoding"
BAD_TARGET = "invalid request target: '#' (a fragment) is not allowed"
BAD_CSRF = "missing or wrong CSRF token (X-CSRF-Token)"
_SAFE = frozenset({"GET", "HEAD"})

_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_JSON = [(b"content-type", JSON_CONTENT_TYPE.encode())]
_TEXT = [(b"content-type", b"text/plain")]
_CLOSE = (b"connection", b"close")
#: Bytes of request body after which the heap is trimmed once the request is over.
TRIM_AFTER = 16 << 20


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
        self.reading = ReadingBudget(settings.max_reading_bytes)

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
                headers = [*message.get("headers", []), (b"x-request-id", request_id)]
                if gw.draining and _CLOSE not in headers:  # as Go's once Shutdown has begun
                    headers.append(_CLOSE)
                message = {**message, "headers": headers}
            elif not message.get("more_body", False):
                exchange.response_complete = True
            await send(message)

        guard = BodyGuard(
            receive,
            gw.settings.body_timeout,
            whole=_held_whole(scope),
            budget=self.reading,
        )
        gw.in_flight.value += 1
        gw.live.add(exchange)
        try:
            headers = _RequestHeaders(scope["headers"])
            request_id = headers.request_id or secrets.token_hex(8).encode()
            exchange.request_id = request_id.decode()
            await self._serve(exchange, scope, guard.receive, tracked_send, headers)
        except BaseException:
            if exchange.outcome == "done" and not exchange.response_complete:
                exchange.outcome = "cancelled"  # a forced stop cut it
            raise
        finally:
            guard.release()
            if guard.total >= TRIM_AFTER:  # its pieces leave free pages inside the heap
                gw.nursery.start_soon(trio.to_thread.run_sync, trim_memory)
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

        if b"#" in scope.get("raw_path", b"") or b"#" in scope.get("query_string", b""):
            exchange.outcome = "error"  # a fragment never belongs in a request (RFC 9112 3.2)
            headers = _JSON + await _drained(receive, extra)
            await respond(send, 400, error_body(BAD_TARGET), headers=headers)
            return
        if headers.framed_twice:  # a smuggling attempt, or a broken proxy (RFC 9112 6.1)
            exchange.outcome = "error"
            await respond(send, 400, error_body(FRAMED_TWICE), headers=[*_JSON, _CLOSE])
            return
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
            authorization = headers.authorization
            if authorization is None and headers.api_key is not None:
                # what the Anthropic SDK and Claude Code send (ANTHROPIC_API_KEY)
                if face_of(route_key(path)) == ANTHROPIC:
                    authorization = b"Bearer " + headers.api_key
            # a key this process does not know yet (made a moment ago, here or on another
            # replica) makes it read the users once more
            user = await self.users.authenticate_fresh(authorization)
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
                body, content_type = error_answer(face_of(route_key(path)), 401, "unauthorized")
                headers = [(b"content-type", content_type), (b"www-authenticate", b"Bearer")]
                headers += await _drained(receive, extra)
                await respond(send, 401, body, headers=headers)
                return
            exchange.user = user.name
            scope[USER_SCOPE_KEY] = user
        elif (user := self.users.authenticate(headers.authorization)) is not None:
            scope[USER_SCOPE_KEY] = user  # a public path tells a key holder more (/healthz)
        if is_control(path):
            exchange.route = route_label(path)
            try:
                await self.control(scope, receive, send)
            except ForemanError as exc:  # the body guard's 408 or 503, before Quart ran
                exchange.outcome = "error"
                if not exchange.response_started:
                    headers = [*_JSON, _CLOSE, *extra]
                    await respond(send, exc.status_code, error_body(exc.message), headers=headers)
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
            headers = retry_after(error, self.gw.settings.poll_interval, exchange.face != NATIVE)
            if isinstance(error, BodyTimeout | ReadingFull):
                headers.append(_CLOSE)  # the rest of the body is never read
            if isinstance(error, ReadingFull):
                headers.append((b"retry-after", b"1"))
            await _end_with(exchange, send, error.status_code, error.message, headers + extra)
        elif exchange.shutdown and exchange.cancel_scope.cancelled_caught:
            exchange.outcome = "shutdown"  # foreman's grace period cut this request
            retry = (b"retry-after", str(SHUTDOWN_RETRY_AFTER).encode())
            await _end_with(exchange, send, 503, SHUTTING_DOWN, [retry, *extra])


async def _end_with(
    exchange: Exchange, send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """End an answer that foreman's error (``status``, ``message``) cut, as well as the
    client can be told: the face's own error answer with ``headers`` if nothing was sent
    yet; once a stream has begun, an error in the stream's own shape ends it (an NDJSON
    ``{"error": message}`` line, as Ollama ends a stream that fails, or the face's
    Server-Sent Events error: :func:`~foreman.dataplane.faces.stream_error`). Any other
    body already begun is left cut short."""
    if not exchange.response_started:
        body, content_type = error_answer(exchange.face, status, message)
        await respond(send, status, body, headers=[(b"content-type", content_type), *headers])
    elif exchange.response_complete:
        return
    elif exchange.ndjson:
        line = error_body(message) + b"\n"
        await send({"type": "http.response.body", "body": line, "more_body": False})
    elif exchange.events:
        event = stream_error(exchange.face, exchange.key, message)
        await send({"type": "http.response.body", "body": event, "more_body": False})


async def _drained(receive: Any, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``extra`` once the unread request body is read (:func:`foreman.dataplane.bodies.drain`,
    for at most :data:`DRAIN_TIMEOUT` seconds), with ``Connection: close`` added if it
    could not be read to its end."""
    drained = False
    with trio.move_on_after(DRAIN_TIMEOUT):
        try:
            drained = await drain(receive)
        except ForemanError:  # the body guard: late, or over the budget
            pass
    if drained or (b"connection", b"close") in extra:
        return extra
    return [*extra, _CLOSE]


def _held_whole(scope: Any) -> bool:
    """Whether foreman reads this request's body whole before answering (chats, embeds,
    the control plane) rather than streaming it through to the target."""
    path = scope["path"]
    if is_control(path):
        return True
    key = route_key(path)
    if key is None:  # refused (404) before any body is read
        return False
    return is_gated(key, scope["method"]) or (key in EMBEDS and scope["method"] == "POST")


class _RequestHeaders:
    """The request headers the front reads, found in one pass (names come lower-cased)."""

    __slots__ = (
        "api_key",
        "authorization",
        "connection",
        "cookie",
        "csrf",
        "framed_twice",
        "host",
        "origin",
        "request_id",
    )

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.host = self.origin = None
        self.authorization: bytes | None = None
        self.api_key: bytes | None = None
        self.cookie: bytes | None = None
        self.csrf: bytes | None = None
        self.connection = self.request_id = b""
        length = chunked = False
        for name, value in raw:
            if name == b"host":
                self.host = value.decode("latin-1")
            elif name == b"origin":
                self.origin = value.decode("latin-1")
            elif name == b"authorization":
                self.authorization = value
            elif name == b"x-api-key":
                self.api_key = value
            elif name == b"connection":
                self.connection = value.lower()
            elif name == b"cookie":
                self.cookie = value if self.cookie is None else self.cookie + b"; " + value
            elif name == b"x-csrf-token":
                self.csrf = value
            elif name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                self.request_id = value  # a caller's id is kept, if it is a sane one
            elif name == b"content-length":
                length = True
            elif name == b"transfer-encoding":
                chunked = True
        #: both Content-Length and Transfer-Encoding: which one frames the body is ambiguous
        self.framed_twice = length and chunked


def create_app(gw: Gateway) -> App:
    """The ASGI app serving ``gw``: data plane, control plane and their common front."""
    return App(gw)
