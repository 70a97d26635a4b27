"""The cloud stand-ins' shell (:class:`CloudStandIn`): state, faults, statistics, ASGI."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import httpx2
import trio

from ..ollama import ASGIStreamTransport
from .asgi import lifespan, read_body, send_frame, unless_disconnected
from .pieces import FAULTS, Aborted, ApiError, Reply, Request, json_text

__all__ = ["CloudStandIn"]


# --- the stand-in -------------------------------------------------------------------------


class CloudStandIn:
    """The shell of a cloud API's stand-in (subclassed by each API; see the module docstring).

    Args:
        api_key: the one key accepted (``sk-test``).
        models: the model ids it knows, as ``GET /v1/models`` lists them
            (:attr:`DEFAULT_MODELS` if None).
        reply: the text of every text reply, streamed one word per delta
            (:attr:`DEFAULT_REPLY` if None).
        tool_preamble: text sent before a tool call ("" for none).

    Faults (set them as attributes, or over ``POST /_standin/faults``):
        overloaded, rate_limited, delay, die_after, fail_midstream (see :data:`FAULTS`
        and each API's package docstring); and ``reachable``: False makes
        :meth:`transport` refuse connections (``httpx2.ConnectError``), as a host that
        is down does.

    Statistics (``/_standin/`` requests are not counted):
        requests: every request, in order, as a dict of ``method``, ``path``,
            ``query``, ``headers`` (lower-cased names) and ``body`` (the parsed JSON,
            or None if the body is empty or not JSON).
        counts: ``"METHOD path"`` (``"POST /v1/messages"``) -> number of requests.
        errors: :attr:`ApiError.tally` -> number of error answers, in-stream errors
            included.
        in_flight, max_in_flight, generations_total: generation requests past
            authentication, each counted until its response ended or its client went
            away.
        streams_total: those that asked for a stream.
    """

    #: The model ids and the reply of a stand-in made without ``models`` or ``reply``.
    DEFAULT_MODELS: tuple[str, ...] = ()
    DEFAULT_REPLY: str = ""
    #: The response header that carries the request id.
    ID_HEADER: bytes = b"request-id"
    #: Headers every JSON answer to an API request carries after the request id.
    JSON_HEADERS: tuple[tuple[bytes, bytes], ...] = ()
    #: Headers every stream carries after the request id.
    STREAM_HEADERS: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        models: list[str] | tuple[str, ...] | None = None,
        reply: str | None = None,
        tool_preamble: str = "",
    ) -> None:
        self.api_key = api_key
        self.models = list(self.DEFAULT_MODELS if models is None else models)
        self.reply = self.DEFAULT_REPLY if reply is None else reply
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

    # --- what each API gives --------------------------------------------------------------

    def _request_id(self) -> str:
        """A new request id, as the API writes them."""
        raise NotImplementedError

    async def _route(self, send: Any, receive: Any, request: Request) -> None:
        """Answer an API request (not a ``/_standin/`` one); raise :class:`ApiError` to
        answer with an error."""
        raise NotImplementedError

    def _rate_limit_error(self, model: str) -> ApiError:
        """The answer while ``rate_limited`` counts down (a 429 with ``retry-after``)."""
        raise NotImplementedError

    def _overload_error(self) -> ApiError:
        """The answer while ``overloaded`` counts down."""
        raise NotImplementedError

    def _midstream_error(self) -> tuple[str, str]:
        """The ``fail_midstream`` error: its :attr:`ApiError.tally` and its SSE frame."""
        raise NotImplementedError

    # --- ASGI -----------------------------------------------------------------------------

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI 3 application."""
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if path.startswith("/_standin/"):
            await self._control(send, method, path, body)
            return
        request_id = self._request_id()
        query = scope.get("query_string", b"").decode("latin-1")
        self.requests.append(
            {"method": method, "path": path, "query": query, "headers": headers, "body": body}
        )
        self.counts[f"{method} {path}"] += 1
        request = Request(method, path, query, headers, raw, body, request_id)
        try:
            await self._route(send, receive, request)
        except ApiError as error:
            self.errors[error.tally] += 1
            answer = error.body(request_id)
            await self._send(send, error.status, answer, request_id, error.headers)

    async def _send(
        self,
        send: Any,
        status: int,
        body: Any,
        request_id: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        """A JSON answer; ``request_id`` "" (the control endpoints) sends no id headers."""
        payload = json_text(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        if request_id:
            headers += [(self.ID_HEADER, request_id.encode()), *self.JSON_HEADERS]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _generate(
        self,
        send: Any,
        receive: Any,
        request: Request,
        check: Callable[[], str],
        answer: Callable[[], Reply],
    ) -> None:
        """Run one generation: counted in flight until it ends or its client goes.

        ``check`` validates the request and returns its model; then the faults answer
        (``rate_limited``, ``overloaded``) or ``answer`` makes the reply, sent whole
        (after the ``delay`` of all its deltas) or streamed, as ``"stream"`` asks.
        """
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.generations_total += 1
        try:
            model = check()
            streaming = bool(request.body.get("stream"))
            if streaming:
                self.streams_total += 1
            if self.rate_limited > 0:
                self.rate_limited -= 1
                raise self._rate_limit_error(model)
            if self.overloaded > 0:
                self.overloaded -= 1
                raise self._overload_error()
            reply = answer()
            if streaming:
                await self._stream(send, receive, reply.frames, request.id)
                return
            if not await unless_disconnected(
                receive, partial(trio.sleep, self.delay * reply.deltas)
            ):
                return
            if self.die_after is not None:
                raise Aborted("stand-in fault: connection aborted before the response")
            await self._send(send, 200, reply.whole, request.id)
        finally:
            self.in_flight -= 1

    async def _stream(
        self, send: Any, receive: Any, frames: Iterable[tuple[bool, str]], request_id: str
    ) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (self.ID_HEADER, request_id.encode()),
            *self.STREAM_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        died = False

        async def write() -> None:
            nonlocal died
            for sent, (is_delta, frame) in enumerate(frames):
                if is_delta:
                    await trio.sleep(self.delay)
                if self.die_after is not None and sent >= self.die_after:
                    died = True
                    return
                await send_frame(send, frame)
                if self.fail_midstream and is_delta:
                    tally, error = self._midstream_error()
                    self.errors[tally] += 1
                    await send_frame(send, error)
                    return

        if not await unless_disconnected(receive, write):
            return
        if died:
            raise Aborted("stand-in fault: connection aborted mid-stream")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _control(self, send: Any, method: str, path: str, body: Any) -> None:
        if (method, path) == ("POST", "/_standin/faults"):
            try:
                self.set_faults(body)
            except ValueError as exc:
                await self._send(send, 400, {"error": str(exc)}, "")
                return
        elif (method, path) == ("POST", "/_standin/reset"):
            self.reset()
        elif (method, path) != ("GET", "/_standin/stats"):
            await self._send(send, 404, {"error": "not found"}, "")
            return
        await self._send(send, 200, self.stats(), "")
