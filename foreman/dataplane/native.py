"""The data plane: Ollama's three faces, served on raw ASGI, byte for byte.

Routes (``docs/adr/0001-native-ollama-surface.md``, ``docs/adr/0019-faces.md``), by
the percent-decoded path (:func:`~foreman.dataplane.faces.route_key`):

* gated (:func:`~foreman.dataplane.faces.is_gated`): ``/api/chat``, ``/api/generate``,
  ``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``, ``/v1/messages``
  and every other ``/v1/`` path but the two below: **every** request passes the gate,
  whatever its method, spelling or body: foreman cannot be sure what the target will
  run, so it fails closed. The model, when foreman can read one, is checked against
  the inventory first (one re-poll on a miss).
* ``POST /api/embed``, ``/api/embeddings``, ``/v1/embeddings``: relayed at once, no gate.
* ``GET /api/tags``: relayed; while the target is unreachable or slow, the
  last inventory is served instead. ``GET /v1/models``: relayed, or foreman's own
  list when the user can reach more than the builtin backend.
* ``GET /v1/models/{model}``: relayed, or found among foreman's own list (as above).
  These three listing routes are in :mod:`.catalog`.
* ``/`` and every other ``/api/*`` path: relayed as is.
* A path with dot segments (``/api/./chat``) or doubled slashes gets gin's
  ``404 page not found``, as from Ollama, and is never relayed: what foreman
  routes is exactly what the target receives. So does anything outside ``/``,
  ``/api/`` and ``/v1/``.

An Ollama backend serves all three faces (relayed). A Claude backend serves
``/v1/messages`` natively (:mod:`.passthrough`) and Ollama's chat and generate
through its translator; an OpenAI-compatible backend serves the OpenAI routes
natively and Ollama's through its translator; any other pairing is a 400
(:class:`~foreman.dataplane.errors.WrongFace`).

A request that runs for more than :data:`WATCH_AFTER` seconds is watched for its
client going away and is cancelled when it does (:class:`Disconnects`): a chat
waiting at the gate leaves the line, a running one is aborted upstream and frees
the gate.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from typing import Any
from urllib.parse import quote

from ..backends import OllamaBackend
from ..gateway import Gateway
from . import catalog
from . import openai as openai_face
from .answers import respond, user_name
from .disconnects import WATCH_AFTER, Disconnects
from .errors import CannotEmbed, TargetError, TargetUnreachable, WrongFace
from .exchange import Exchange
from .faces import ANTHROPIC, EMBEDS, NATIVE, OPENAI, face_of, is_gated, route_key
from .intake import ClientGone, read_body, stream_body, with_model
from .jsonwire import request_fields
from .names import check_printable, is_cloud, normalize
from .passthrough import relay_api
from .relay import NDJSON, relay
from .rights import check_model_management
from .routing import Route, fallback, resolve

__all__ = ["WATCH_AFTER", "ClientGone", "DataPlane", "Disconnects", "route_key"]

LOGGER = logging.getLogger("foreman.dataplane.native")

#: Request headers passed on to the target. Never Host or Origin: Ollama bound to
#: loopback answers 403 to a foreign Host or Origin (foreman checks them itself).
#: Never the client's Authorization: foreman sends its own (FOREMAN_OLLAMA_TOKEN).
FORWARDED = frozenset({b"content-type", b"accept", b"user-agent"})

#: Characters a path keeps unescaped when it is encoded again for the target.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


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
        check_model_management(self.settings, scope, key)
        method = scope["method"]
        exchange.face, exchange.key = face_of(key), key
        if is_gated(key, method):
            handler = self._chat
        elif key in EMBEDS and method == "POST":
            handler = self._embed
        elif key == "/api/tags" and method == "GET":
            handler = partial(catalog.tags, self)
        elif key == "/v1/models" and method == "GET":
            handler = partial(catalog.models, self)
        elif key.startswith("/v1/models/") and method == "GET":
            handler = partial(catalog.model, self)
        else:
            handler = self.passthrough
        await handler(exchange, scope, receive, send, extra_headers, key)

    # --- routes ---------------------------------------------------------------------

    async def _chat(
        self, exchange: Exchange, scope: Any, receive: Any, send: Any, extra: Any, key: str
    ) -> None:
        body = await read_body(scope, receive, self.settings.max_body)
        fields = request_fields(body)
        model = fields.get("model")
        exchange.count_tokens = True
        name = model if isinstance(model, str) else ""
        exchange.model = name or None
        # Ollama's and Anthropic's faces may fall back to Claude; OpenAI's may not
        route = self._route(scope, name, chat=exchange.face != OPENAI)
        backend = self.gw.builtin
        if route is not None:
            extra = self._routed(exchange, route, extra)
            if route.model != name:
                body = with_model(body, route.model)
            if route.backend.type != "ollama":
                await self._elsewhere(
                    route, key, body, fields, exchange, scope, receive, send, extra
                )
                return
            backend = route.backend
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
            if (
                route is not None
                and exchange.face != OPENAI
                and not exchange.response_started
                and self.gw.backends
            ):
                alternative = fallback(self.gw.backends, user_name(scope), route)
            if alternative is None:
                raise
            LOGGER.info("%s is unreachable: falling back to %s", backend.name, alternative.label)
            extra = self._routed(exchange, alternative, extra)
            body = with_model(body, alternative.model)
            await self._elsewhere(
                alternative, key, body, fields, exchange, scope, receive, send, extra
            )

    async def _elsewhere(
        self,
        route: Route,
        key: str,
        body: bytes,
        fields: dict[str, Any],
        exchange: Exchange,
        scope: Any,
        receive: Any,
        send: Any,
        extra: Any,
    ) -> None:
        """A generation routed to a Claude or OpenAI-compatible backend: its own face
        natively, Ollama's through the translator, anything else a 400."""
        kind = route.backend.type
        if exchange.face == NATIVE and key in ("/api/chat", "/api/generate"):
            await self._translate(route, key, fields, exchange, receive, send, extra)
            return
        if exchange.face == ANTHROPIC and kind == "anthropic" and key == "/v1/messages":
            path = "/v1/messages"
        elif exchange.face == OPENAI and kind == "openai" and key in openai_face.BACKEND_PATHS:
            path = openai_face.BACKEND_PATHS[key]
        else:
            raise WrongFace(route.backend.name, kind, key)
        if scope["query_string"]:
            path += "?" + scope["query_string"].decode("latin-1")
        async with self.disconnects.watching(receive, exchange):
            await relay_api(route.backend, path, body, scope, send, exchange, extra)

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
        # (Ollama streams unless told not to; its OpenAI and Anthropic faces only when asked)
        timeout = self.settings.response_timeout
        stream = fields.get("stream")
        if stream is True or (stream is None and exchange.face == NATIVE):
            timeout = self.settings.idle_timeout
        async with self.disconnects.watching(receive, exchange):
            async with backend.gate.hold(len(body)) as waited:
                exchange.gate_wait = waited
                request = self.upstream_request(backend, scope, body)
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
        body = await read_body(scope, receive, self.settings.max_body)
        model = request_fields(body).get("model")
        name = model if isinstance(model, str) else ""
        exchange.model = name or None
        backend = self.gw.builtin
        route = self._route(scope, name, chat=False)
        if route is not None:
            extra = self._routed(exchange, route, extra)
            if route.model != name:
                body = with_model(body, route.model)
            if route.backend.type == "openai" and key == "/v1/embeddings":
                async with self.disconnects.watching(receive, exchange):
                    backend_api: Any = route.backend
                    await relay_api(backend_api, "/embeddings", body, scope, send, exchange, extra)
                return
            if route.backend.type != "ollama":
                raise CannotEmbed(route.backend.name, route.backend.type)
            backend = route.backend
        request = self.upstream_request(backend, scope, body)
        del body
        backend.embeds_in_flight += 1
        try:
            async with self.disconnects.watching(receive, exchange):
                await self._relay(
                    backend, request, send, exchange, self.settings.idle_timeout, extra
                )
        finally:
            backend.embeds_in_flight -= 1

    async def passthrough(
        self, exchange: Exchange, scope: Any, receive: Any, send: Any, extra: Any, key: str
    ) -> None:
        """Relay the request as is to the builtin backend (a large upload streamed)."""
        builtin = self.gw.builtin
        first = await receive()
        if first["type"] == "http.disconnect":
            raise ClientGone()
        content: bytes | AsyncIterator[bytes] = first.get("body", b"")
        if first.get("more_body", False):  # a large upload: streamed, never held whole
            content = stream_body(first["body"], receive)
        request = self.upstream_request(builtin, scope, content, keep_length=True)
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

    def upstream_request(
        self, backend: OllamaBackend, scope: Any, content: Any, *, keep_length: bool = False
    ) -> Any:
        """The request for ``backend``'s target: the client's method, path (encoded
        again), query and :data:`FORWARDED` headers, and ``content``."""
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
        return resolve(backends, user_name(scope), model, chat=chat)

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
