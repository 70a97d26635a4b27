"""The stand-in Ollama target: state, statistics and the knobs tests turn."""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import httpx2
import trio

from ._faults import Faults
from ._models import DEFAULT_MODELS, ModelSpec, parse_name
from ._scheduler import Scheduler
from ._transport import ASGIStreamTransport
from ._wire import rfc3339

__all__ = ["Faults", "StandIn"]


class StandIn:
    """A fake Ollama server, as ``docs/ollama-protocol.md`` describes Ollama.

    Serves Ollama's native API from :attr:`app` (a ``quart_trio.QuartTrio``), either
    in-process through :meth:`transport` or on a socket through :func:`serve`.
    All internal timing uses ``trio.current_time()``, so tests can run it on
    trio's ``MockClock``.

    Args:
        models: the models "on disk".
        max_loaded_models: ``OLLAMA_MAX_LOADED_MODELS``: runners resident at once.
        token_rate: NDJSON lines per second of a chat/generate stream.
        load_delay: seconds to load a model that is not resident.
        reply_tokens: content tokens per reply unless ``options.num_predict`` is smaller.
        default_keep_alive: seconds, ``OLLAMA_KEEP_ALIVE``, for a newly loaded model.
        token: if set, every Ollama request must carry ``Authorization: Bearer <token>``,
            else 401 ``{"error":"unauthorized"}`` (a target behind an auth proxy).
            The ``/_standin/`` control endpoints are exempt.
        version: what ``/api/version`` reports.
        embed_delay: seconds of runner time per embedded input (the runner's one slot
            is held meanwhile, so embeds to one model run one at a time).

    Statistics (updated by the handlers; ``/_standin/`` requests are not counted):
        chats_in_flight, max_chats_in_flight, chats_total: ``/api/chat`` and
            ``/api/generate`` requests, and the generations of the compatibility faces
            (``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``,
            ``/v1/messages``), each counted from handler entry until its
            response body finished or the client went away.
        embeds_in_flight, max_embeds_in_flight, embeds_total: the same for
            ``/api/embed``, ``/api/embeddings`` and ``/v1/embeddings``.
        requests: ``"GET /api/tags"`` -> count, every request that reached the app.
        prompts: the last message's content (chat) or the prompt (generate), its first
            100 characters -> count,
            for every chat or generate request naming a known model.
        replies: the content of the last 20 replies planned (oldest first, each cut at
            200 characters), whichever face asked for them.
        last_headers: lower-cased request headers of the most recent request.
    """

    def __init__(
        self,
        *,
        models: Iterable[ModelSpec] = DEFAULT_MODELS,
        max_loaded_models: int = 2,
        token_rate: float = 20.0,
        load_delay: float = 0.0,
        reply_tokens: int = 6,
        default_keep_alive: float = 300.0,
        token: str | None = None,
        version: str = "0.33.0",
        embed_delay: float = 0.01,
    ) -> None:
        from ._app import create_app  # the app module needs this one

        self.models: dict[str, ModelSpec] = {}
        for spec in models:
            self.add_model(spec)
        self.token_rate = token_rate
        self.reply_tokens = reply_tokens
        self.token = token
        self.version = version
        self.embed_delay = embed_delay
        self.scheduler = Scheduler(
            max_loaded=max_loaded_models,
            load_delay=load_delay,
            default_keep_alive=default_keep_alive,
        )
        self.reachable = True
        self._thawed: trio.Event | None = None
        self.faults = Faults()
        self.chats_in_flight = self.max_chats_in_flight = self.chats_total = 0
        self.embeds_in_flight = self.max_embeds_in_flight = self.embeds_total = 0
        self.requests: collections.Counter[str] = collections.Counter()
        self.prompts: collections.Counter[str] = collections.Counter()
        self.replies: collections.deque[str] = collections.deque(maxlen=20)
        self.last_headers: dict[str, str] = {}
        self._epoch: tuple[trio.abc.Clock, int] | None = None
        self.app = create_app(self)

    # --- knobs --------------------------------------------------------------------------

    def go_down(self) -> None:
        """Refuse connections made through :meth:`transport` (``httpx2.ConnectError``)."""
        self.reachable = False

    def come_back(self) -> None:
        """Accept connections again (loaded models stay loaded; see :meth:`unload_all`)."""
        self.reachable = True

    def freeze(self) -> None:
        """Behave like a stopped process (``SIGSTOP``): connections are accepted, but no
        request gets an answer and no stream sends another line until :meth:`thaw`.
        The ``/_standin/`` control endpoints keep answering."""
        if self._thawed is None:
            self._thawed = trio.Event()

    def thaw(self) -> None:
        """Undo :meth:`freeze`: every held request and stream goes on where it stopped."""
        if self._thawed is not None:
            self._thawed.set()
            self._thawed = None

    async def wait_thawed(self) -> None:
        """Return at once unless frozen; else when :meth:`thaw` is called."""
        while self._thawed is not None:
            await self._thawed.wait()

    def transport(self, nursery: trio.Nursery) -> httpx2.AsyncBaseTransport:
        """An in-process httpx2 transport to :attr:`app`, honouring :attr:`reachable`."""
        return ASGIStreamTransport(self.app, nursery, reachable=lambda: self.reachable)

    def add_model(self, spec: ModelSpec) -> None:
        """Put a model on the disk (like ``ollama pull``); replaces one with the same name."""
        self.models[spec.parsed.key] = spec

    def remove_model(self, name: str) -> None:
        """Delete a model from the disk (like ``ollama rm``); unknown names are ignored."""
        parsed = parse_name(name)
        if parsed is not None:
            self.models.pop(parsed.key, None)

    def find(self, name: str) -> ModelSpec | None:
        """The model ``name`` resolves to as Ollama resolves names, if any."""
        parsed = parse_name(name)
        return None if parsed is None else self.models.get(parsed.key)

    def unload_all(self) -> None:
        """Forget every loaded model, as a restarted Ollama would."""
        self.scheduler.unload_all()

    def resident(self) -> list[str]:
        """Display names of loaded (or loading) models, after dropping expired ones."""
        return [runner.spec.parsed.display for runner in self.scheduler.runners()]

    # --- statistics ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot of the statistics, :meth:`resident` and :attr:`faults`."""
        return {
            "reachable": self.reachable,
            "chats_in_flight": self.chats_in_flight,
            "max_chats_in_flight": self.max_chats_in_flight,
            "chats_total": self.chats_total,
            "embeds_in_flight": self.embeds_in_flight,
            "max_embeds_in_flight": self.max_embeds_in_flight,
            "embeds_total": self.embeds_total,
            "requests": dict(self.requests),
            "prompts": dict(self.prompts),
            "replies": list(self.replies),
            "resident": self.resident(),
            "faults": dataclasses.asdict(self.faults),
        }

    def reset_stats(self) -> None:
        """Zero the totals and request counts; the maxima restart from what is in flight."""
        self.chats_total = self.embeds_total = 0
        self.max_chats_in_flight = self.chats_in_flight
        self.max_embeds_in_flight = self.embeds_in_flight
        self.requests.clear()
        self.prompts.clear()
        self.replies.clear()
        self.last_headers = {}

    def track(self, kind: Literal["chats", "embeds"]) -> Callable[[], None]:
        """Count one request of ``kind`` in; returns the (sync) callback that counts it out."""
        in_flight = getattr(self, f"{kind}_in_flight") + 1
        setattr(self, f"{kind}_in_flight", in_flight)
        setattr(self, f"{kind}_total", getattr(self, f"{kind}_total") + 1)
        setattr(
            self, f"max_{kind}_in_flight", max(in_flight, getattr(self, f"max_{kind}_in_flight"))
        )

        def done() -> None:
            setattr(self, f"{kind}_in_flight", getattr(self, f"{kind}_in_flight") - 1)

        return done

    def wall_ns(self, trio_time: float | None = None) -> int:
        """Epoch nanoseconds for a ``trio.current_time()`` value (default now).

        The offset between the two clocks is fixed once per trio clock, so a
        deadline renders the same bytes every time, and under ``MockClock``
        timestamps follow virtual time.
        """
        clock = trio.lowlevel.current_clock()
        if self._epoch is None or self._epoch[0] is not clock:
            self._epoch = (clock, time.time_ns() - round(trio.current_time() * 1e9))
        if trio_time is None:
            trio_time = trio.current_time()
        return self._epoch[1] + round(trio_time * 1e9)

    def timestamp(self, trio_time: float | None = None) -> str:
        """RFC 3339 UTC for a ``trio.current_time()`` value (default now), as Go writes it."""
        return rfc3339(self.wall_ns(trio_time))
