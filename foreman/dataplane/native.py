"""The data plane: Ollama's own routes, served on raw ASGI, byte for byte.

Routes (``docs/adr/0001-native-ollama-surface.md``), by the percent-decoded path:

* ``/api/chat``, ``/api/generate``: **every** request passes the gate, whatever
  its method, spelling or body: foreman cannot be sure what the target will
  run, so it fails closed. The model, when foreman can read one, is checked
  against the inventory first (one re-poll on a miss).
* ``POST /api/embed``, ``POST /api/embeddings``: relayed at once, no gate.
* ``GET /api/tags``: relayed; while the target is unreachable or slow, the
  last inventory is served instead.
* ``/`` and every other ``/api/*`` path: relayed as is, the body streamed.
* A path with dot segments (``/api/./chat``) or doubled slashes gets gin's
  ``404 page not found``, as from Ollama, and is never relayed: what foreman
  routes is exactly what the target receives. So does anything outside
  ``/api/`` (``/v1/`` included: OpenAI's surface would bypass the gate).

A request that runs for more than :data:`WATCH_AFTER` seconds is watched for its
client going away and is cancelled when it does (:class:`Disconnects`): a chat
waiting at the gate leaves the line, a running one is aborted upstream and frees
the gate.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any
from urllib.parse import quote

import trio

from ..backends import OllamaBackend
from ..gateway import Gateway
from ..users import USER_SCOPE_KEY
from .bodies import drain
from .errors import BodyTooLarge, CannotEmbed, TargetError, TargetUnreachable
from .exchange import Exchange
from .jsonwire import JSON_CONTENT_TYPE, dumps, request_fields
from .listing import reachable_models
from .names import check_printable, is_cloud, normalize
from .relay import NDJSON, relay
from .routing import Route, fallback, resolve

__all__ = ["DataPlane", "route_key"]

LOGGER = logging.getLogger("foreman.dataplane.native")

_JSON = [(b"content-type", JSON_CONTENT_TYPE.encode())]

GATED = frozenset({"/api/chat", "/api/generate"})
EMBEDS = frozenset({"/api/embed", "/api/embeddings"})

#: Request headers passed on to the target. Never Host or Origin: Ollama bound to
#: loopback answers 403 to a foreign Host or Origin (foreman checks them itself).
#: Never the client's Authorization: foreman sends its own (FOREMAN_OLLAMA_TOKEN).
FORWARDED = frozenset({b"content-type", b"accept", b"user-agent"})

#: Characters a path keeps unescaped when it is encoded again for the target.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


def route_key(path: str) -> str | None:
    """The route a percent-decoded path selects, or None for gin's 404.

    The key is lower-cased and loses a trailing slash, so that no spelling of a
    gated route escapes the gate (Ollama itself answers 404 or a redirect to
    such spellings). Dot segments and empty segments are refused outright.

    >>> route_key("/api/chat/"), route_key("/API/Chat"), route_key("/api/./chat")
    ('/api/chat', '/api/chat', None)
    """
    segments = path.split("/")
    if segments[0] != "" or "." in segments or ".." in segments or "" in segments[1:-1]:
        return None
    key = path.rstrip("/").lower() or "/"
    return key if key == "/" or key.startswith("/api/") else None


class DataPlane:
    """The Ollama routes for one :class:`~foreman.gateway.Gateway`."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.settings = gw.settings
        self.disconnects = Disconnects(gw.nursery)
        gw.nursery.start_soon(self.disconnects.run)

    async def handle(
        self,
        exchange: Exchange,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        key: str,
        extra_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Serve one request on route ``key`` (from :func:`route_key`).

        Raises:
            ForemanError: foreman answers it itself (the caller turns it into
                Ollama's error shape); nothing has been sent yet.
        """
        method = scope["method"]
        if key in GATED:
            handler = self._chat
        elif key in EMBEDS and method == "POST":
            handler = self._embed
        elif key == "/api/tags" and method == "GET":
            handler = self._tags
        else:
            handler = self._passthrough
        await handler(exchange, scope, receive, send, extra_headers, key)

    # --- routes ---------------------------------------------------------------------

    async def _chat(
        self, exchange: Exchange, scope: Any, receive: Any, send: Any, extra: Any, key: str
    ) -> None:
        body = await self._read_body(scope, receive)
        fields = request_fields(body)
        model = fields.get("model")
        exchange.count_tokens = True
        name = model if isinstance(model, str) else ""
        exchange.model = name or None
        route = self._route(scope, name, chat=True)
        backend = self.gw.builtin
        if route is not None:
            extra = self._routed(exchange, route, extra)
            if route.backend.type != "ollama":
                await self._translate(route, key, fields, exchange, receive, send, extra)
                return
            backend = route.backend
            if route.model != name:
                body = _with_model(body, route.model)
        try:
            await self._ollama_chat(
                backend,
                route.model if route else name,
                body,
                fields,
                exchange,
                scope,
                receive,
                send,
                extra,
            )
        except TargetUnreachable:
            alternative = None
            if route is not None and not exchange.response_started and self.gw.backends:
                alternative = fallback(self.gw.backends, _user(scope), route)
            if alternative is None:
                raise
            LOGGER.info("%s is unreachable: falling back to %s", backend.name, alternative.label)
            extra = self._routed(exchange, alternative, extra)
            await self._translate(alternative, key, fields, exchange, receive, send, extra)

    async def _ollama_chat(
        self,
        backend: OllamaBackend,
        model: str,
        body: bytes,
        fields: dict[str, Any],
        exchange: Exchange,
        scope: Any,
        receive: Any,
        send: Any,
        extra: Any,
    ) -> None:
        """Relay a chat or generate for ``model`` (the backend's own name for it) to an
        Ollama backend, through its gate."""
        if model and scope["method"] == "POST" and normalize(model) is not None:
            if not is_cloud(model):
                await backend.inventory.require(model)
        # A stream's status line must come within the idle timeout (model load included);
        # a "stream": false answer comes whole at the end, within the response timeout.
        timeout = self.settings.response_timeout
        if fields.get("stream") is not False:
            timeout = self.settings.idle_timeout
        async with self.disconnects.watching(receive, exchange):
            async with backend.gate.hold(len(body)) as waited:
                exchange.gate_wait = waited
                request = self._request(backend, scope, body)
                del body  # the request holds it now, and only for as long as it is sent
                await self._relay(backend, request, send, exchange, timeout, extra)

    async def _translate(
        self,
        route: Route,
        key: str,
        fields: dict[str, Any],
        exchange: Exchange,
        receive: Any,
        send: Any,
        extra: Any,
    ) -> None:
        """Answer a chat or generate from a Claude or OpenAI-compatible backend, in
        Ollama's shape (NDJSON lines as the backend's deltas arrive, or one JSON object)."""
        endpoint = "chat" if key == "/api/chat" else "generate"
        translator = route.backend.translator  # type: ignore[union-attr]
        async with self.disconnects.watching(receive, exchange):
            content_type, chunks = await translator.answer(endpoint, fields, route.model)
            headers = [(b"content-type", content_type.encode()), *extra]
            async with aclosing(chunks):
                if not content_type.startswith(NDJSON):
                    body = b"".join([chunk async for chunk in chunks])
                    exchange.final_line = body
                    await respond(send, 200, body, headers=headers)
                    return
                exchange.ndjson = True
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                last = b""
                async for last in chunks:
                    await send({"type": "http.response.body", "body": last, "more_body": True})
            exchange.final_line = last
            if last.startswith(b'{"error"'):
                exchange.outcome = "error"
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _embed(
        self, exchange: Exchange, scope: Any, receive: Any, send: Any, extra: Any, key: str
    ) -> None:
        body = await self._read_body(scope, receive)
        model = request_fields(body).get("model")
        name = model if isinstance(model, str) else ""
        exchange.model = name or None
        backend = self.gw.builtin
        route = self._route(scope, name, chat=False)
        if route is not None:
            extra = self._routed(exchange, route, extra)
            if route.backend.type != "ollama":
                raise CannotEmbed(route.backend.name, route.backend.type)
            backend = route.backend
            if route.model != name:
                body = _with_model(body, route.model)
        request = self._request(backend, scope, body)
        del body
        backend.embeds_in_flight += 1
        try:
            async with self.disconnects.watching(receive, exchange):
                await self._relay(
                    backend, request, send, exchange, self.settings.idle_timeout, extra
                )
        finally:
            backend.embeds_in_flight -= 1

    async def _tags(
        self, exchange: Exchange, scope: Any, receive: Any, send: Any, extra: Any, key: str
    ) -> None:
        gw = self.gw
        if gw.backends is not None:
            listing = reachable_models(gw.backends, _user(scope))
            if listing is not None:  # more than the builtin backend: foreman's own list
                await drain(receive)
                await respond(send, 200, listing, headers=_JSON + extra)
                return
        inventory = gw.inventory
        if not inventory.degraded.value or inventory.body is None:
            request = self._request(gw.builtin, scope, await self._read_body(scope, receive))
            try:
                status, headers, body = await gw.target.fetch(
                    request, total_timeout=self.settings.control_timeout
                )
            except TargetError as exc:
                inventory.kick()
                if inventory.body is None:
                    raise
                LOGGER.info("answering /api/tags from the last inventory: %s", exc)
            else:
                await respond(send, status, body, headers=headers + extra)
                return
        else:
            inventory.kick()
        assert inventory.body is not None
        await respond(send, 200, inventory.body, headers=_JSON + extra)

    async def _passthrough(
        self, exchange: Exchange, scope: Any, receive: Any, send: Any, extra: Any, key: str
    ) -> None:
        builtin = self.gw.builtin
        first = await receive()
        if first["type"] == "http.disconnect":
            raise ClientGone()
        content: bytes | AsyncIterator[bytes] = first.get("body", b"")
        if first.get("more_body", False):  # a large upload: streamed, never held whole
            content = _stream_body(first["body"], receive)
        request = self._request(builtin, scope, content, keep_length=True)
        timeout = self.settings.idle_timeout
        if isinstance(content, bytes):
            async with self.disconnects.watching(receive, exchange):
                await self._relay(builtin, request, send, exchange, timeout, extra)
        else:
            await self._relay(builtin, request, send, exchange, timeout, extra)

    # --- helpers --------------------------------------------------------------------

    async def _relay(
        self,
        backend: OllamaBackend,
        request: Any,
        send: Any,
        exchange: Exchange,
        header_timeout: float,
        extra: Any,
    ) -> None:
        inventory = backend.inventory
        try:
            await relay(
                backend.target,
                request,
                send,
                exchange,
                header_timeout=header_timeout,
                extra_headers=extra,
            )
        except TargetError:
            inventory.kick()  # readiness follows reality within seconds
            raise
        if exchange.outcome == "error" or inventory.degraded.value:
            inventory.kick()  # it failed mid-stream, or the target is back

    def _request(
        self, backend: OllamaBackend, scope: Any, content: Any, *, keep_length: bool = False
    ) -> Any:
        wanted = FORWARDED | {b"content-length"} if keep_length else FORWARDED
        headers = [(k, v) for k, v in scope["headers"] if k.lower() in wanted]
        return backend.target.request(
            scope["method"],
            quote(scope["path"], safe=_PATH_SAFE).encode(),
            query=scope["query_string"],
            headers=headers,
            content=content if content else None,
        )

    def _route(self, scope: Any, model: str, *, chat: bool) -> Route | None:
        """The route of a POST's model, or None: the builtin backend, as in v1."""
        check_printable(model)  # never to the gate, the target or a header
        backends = self.gw.backends
        if backends is None or scope["method"] != "POST":
            return None
        return resolve(backends, _user(scope), model, chat=chat)

    @staticmethod
    def _routed(exchange: Exchange, route: Route, extra: Any) -> list[tuple[bytes, bytes]]:
        """``extra`` with ``X-Foreman-Backend`` (none while the request names no model);
        the access log names the route too."""
        if not route.model:
            return extra
        exchange.backend = route.label
        exchange.echo = route.echo
        headers = [(k, v) for k, v in extra if k != b"x-foreman-backend"]
        return [*headers, (b"x-foreman-backend", route.label.encode())]

    async def _read_body(self, scope: Any, receive: Any) -> bytes:
        """The whole request body, up to ``max_body`` bytes.

        Raises:
            BodyTooLarge: the body (or its announced ``Content-Length``) is too large.
            ClientGone: the client went away first.
        """
        limit = self.settings.max_body
        for name, value in scope["headers"]:
            if name.lower() == b"content-length" and value.isdigit() and int(value) > limit:
                raise BodyTooLarge(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if not message.get("more_body", False) and not chunks:
                if len(chunk) > limit:
                    raise BodyTooLarge(limit)
                return chunk
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _user(scope: Any) -> str:
    user = scope.get(USER_SCOPE_KEY)
    return user.name if user is not None else "anonymous"


def _with_model(body: bytes, model: str) -> bytes:
    """The request body with its ``model`` field (any case, as Go matches it) replaced.

    Read as :func:`~foreman.dataplane.jsonwire.request_fields` reads it (Go's way: invalid UTF-8
    replaced, anything after the first value ignored), so a body routing could read
    can always be rewritten; what follows the first value is dropped.
    """
    value = request_fields(body, lower=False)
    if not value:
        return body  # nothing routing could have read either
    keys = [k for k in value if k.lower() == "model"] or ["model"]
    for k in keys:
        value[k] = model
    return dumps(value)


async def _stream_body(first: bytes, receive: Any) -> AsyncIterator[bytes]:
    """A request body as it arrives, for the target; raises ClientGone on a disconnect."""
    yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


#: Seconds a request runs before foreman watches for its client going away. Most
#: answers (an embed, a ``/api/show``) come sooner, and starting a watcher costs more
#: than the rest of such a request; a client that leaves is noticed this much later.
WATCH_AFTER = 0.05


class _Watch:
    __slots__ = ("done", "due", "exchange", "receive", "scope")

    def __init__(self, exchange: Exchange, receive: Any, due: float) -> None:
        self.exchange, self.receive, self.due = exchange, receive, due
        self.done = False
        self.scope: trio.CancelScope | None = None


class Disconnects:
    """Cancels a request whose client goes away; a watcher only for the long ones.

    :meth:`watching` notes a request; one task (:meth:`run`, in the root nursery)
    starts a watcher for every request still running :data:`WATCH_AFTER` seconds
    later, checking every half of that. The watcher takes every later ``receive()``
    (the request body must be read already): on ``http.disconnect`` before the
    answer is complete it cancels the request (``exchange.cancel_scope``, outcome
    ``cancelled``): a chat waiting at the gate leaves the line, a running one is
    aborted upstream and frees the gate. Watchers run in the root nursery so that an
    error of the request never comes out wrapped in an exception group.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._pending: deque[_Watch] = deque()
        self._wake = trio.Event()

    @asynccontextmanager
    async def watching(self, receive: Any, exchange: Exchange) -> AsyncIterator[None]:
        """Within this block, ``exchange`` is cancelled if its client goes away."""
        watch = _Watch(exchange, receive, trio.current_time() + WATCH_AFTER)
        self._pending.append(watch)
        self._wake.set()
        try:
            yield
        finally:
            watch.done = True
            if watch.scope is not None:
                watch.scope.cancel()

    async def run(self) -> None:
        """Start the watchers that are due; runs until cancelled."""
        pending = self._pending
        while True:
            if not pending:
                self._wake = trio.Event()
                await self._wake.wait()
            now = trio.current_time()
            while pending and (pending[0].done or pending[0].due <= now):
                watch = pending.popleft()
                if not watch.done:
                    watch.scope = trio.CancelScope()
                    self._nursery.start_soon(self._watch, watch)
            if pending:
                await trio.sleep_until(max(pending[0].due, now + WATCH_AFTER / 2))

    @staticmethod
    async def _watch(watch: _Watch) -> None:
        assert watch.scope is not None
        with watch.scope:
            while (await watch.receive())["type"] != "http.disconnect":
                pass
            exchange = watch.exchange
            if not exchange.response_complete:  # not the disconnect after a full answer
                exchange.outcome = "cancelled"
                exchange.cancel_scope.cancel()


async def respond(
    send: Any,
    status: int,
    body: bytes,
    *,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Send a whole answer (with its ``Content-Length``)."""
    has_length = any(k.lower() == b"content-length" for k, _ in headers)
    if not has_length:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def retry_after(exc: Exception, poll_interval: float) -> list[tuple[bytes, bytes]]:
    """``Retry-After`` for a 503 while the target is unreachable (seconds, at most 30)."""
    if isinstance(exc, TargetUnreachable):
        return [(b"retry-after", str(math.ceil(min(poll_interval, 30))).encode())]
    return []
