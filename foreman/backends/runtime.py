"""A running backend: what foreman keeps in memory and in the task tree for each one.

* :class:`OllamaBackend` owns what v1 had once: its target client, gate (the worker
  slot: one chat at a time), tags poller
  (:class:`~foreman.backends.ollama.inventory.Inventory`, which
  is also its heartbeat), ps residency watcher and embedder warm-up supervisor.
* :class:`ApiBackend` wraps a translator (:mod:`.anthropic`, :mod:`.openai`) and its
  heartbeat, a ``GET /v1/models`` every ``FOREMAN_HEARTBEAT_INTERVAL`` seconds.

Both report a :class:`Status` and record what discovery found in the store.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ..dataplane.errors import (
    TargetBroken,
    TargetError,
    TargetStatus,
    TargetTimeout,
    TargetUnauthorized,
)
from ..dataplane.gate import Gate
from ..outbound import short_reason
from .ollama.inventory import Inventory
from .ollama.residency import Residency
from .ollama.target import Target
from .registry import BackendRecord

__all__ = ["HEALTHY_WITHIN", "ApiBackend", "OllamaBackend", "Status", "Translator"]

LOGGER = logging.getLogger("foreman.backends")

#: A backend is healthy when its last successful check is at most this many seconds old
#: (or two heartbeat intervals, if that is longer).
HEALTHY_WITHIN = 60.0
#: Seconds a heartbeat check may take.
CHECK_TIMEOUT = 5.0

#: Records discovered models: ``await record(backend_id, [(name, size_bytes)])``.
Recorder = Callable[[int, list[tuple[str, int | None]]], Awaitable[None]]


@dataclass
class Status:
    """A backend's state as its heartbeat last saw it. Times are Unix seconds.

    ``state``: ``connecting`` (no check finished yet), ``connected``, ``unreachable``
    (no connection, a timeout, an error status) or ``unauthorized`` (the backend
    refused foreman's key).
    """

    state: str = "connecting"
    last_ping: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    model_count: int = 0

    def healthy(self, now: float, interval: float) -> bool:
        """A success within :data:`HEALTHY_WITHIN` seconds (or two ``interval``\\ s)."""
        window = max(HEALTHY_WITHIN, 2 * interval)
        return (
            self.state == "connected"
            and self.last_success is not None
            and now - self.last_success <= window
        )

    def failed(self, exc: TargetError) -> None:
        """The check failed: ``last_error`` is a short, fixed reason (never the body the
        backend answered: :func:`foreman.outbound.short_reason`); the log has the rest."""
        self.last_ping, self.last_error = time.time(), short_reason(exc)
        unauthorized = isinstance(exc, TargetUnauthorized) or (
            isinstance(exc, TargetStatus) and exc.status in (401, 403)
        )
        self.state = "unauthorized" if unauthorized else "unreachable"

    def succeeded(self, model_count: int) -> None:
        self.last_ping = self.last_success = time.time()
        self.state, self.last_error, self.model_count = "connected", None, model_count


class Translator(Protocol):
    """What :mod:`.anthropic` and :mod:`.openai` provide (see their docstrings)."""

    type: str

    async def models(self, *, timeout: float = ...) -> list[tuple[str, int | None]]: ...  # noqa: ASYNC109

    async def answer(self, endpoint: Any, fields: dict[str, Any], model: str) -> Any: ...

    async def aclose(self) -> None: ...


class OllamaBackend:
    """One Ollama server: target, gate, inventory and residency, as v1 had them once."""

    type = "ollama"

    def __init__(
        self,
        record: BackendRecord,
        target: Target,
        gate: Gate,
        inventory: Inventory,
        residency: Residency,
        interval: float,
    ) -> None:
        self.record = record
        self.target, self.gate, self.inventory, self.residency = target, gate, inventory, residency
        self.interval = interval
        self.embeds_in_flight = 0

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def status(self) -> Status:
        """Read off the tags poller, which is this backend's heartbeat."""
        inventory = self.inventory
        status = Status(
            last_ping=inventory.last_poll,
            last_success=inventory.last_success,
            model_count=len(inventory.models),
        )
        if inventory.polls.value == 0:
            return status
        if inventory.degraded.value and inventory.last_error is not None:
            status.failed(inventory.last_error)
            status.last_ping = inventory.last_poll
        else:
            status.state = "connected"
        return status

    def healthy(self) -> bool:
        """Reachable, with a successful poll within :data:`HEALTHY_WITHIN` seconds (or two
        intervals). Read on every routed chat: no :class:`Status` is built for it."""
        inventory = self.inventory
        last = inventory.last_success
        window = max(HEALTHY_WITHIN, 2 * self.interval)
        return not inventory.degraded.value and last is not None and time.time() - last <= window

    def discovered(self) -> list[tuple[str, int | None]]:
        """The models of the last successful ``/api/tags``, with their sizes in bytes."""
        if self.inventory.body is None:
            return []
        try:
            entries = json.loads(self.inventory.body)["models"]
            return [(str(e.get("model") or e["name"]), e.get("size")) for e in entries]
        except (ValueError, KeyError, TypeError, AttributeError):
            return []

    async def check(self, record: Recorder) -> list[tuple[str, int | None]]:
        """Poll ``/api/tags`` now (shared with the poller), ``record`` the models found and
        return them.

        Raises:
            TargetError: the poll failed.
        """
        await self.inventory.refresh()
        if self.inventory.degraded.value and self.inventory.last_error is not None:
            raise self.inventory.last_error
        models = self.discovered()
        await record(self.record.id, models)
        return models

    async def record_discoveries(self, record: Recorder) -> None:
        """After every successful poll, store the models it found; never returns."""
        seen = 0
        while True:
            await self.inventory.polls.wait_value(lambda n, seen=seen: n > seen)
            seen = self.inventory.polls.value
            if not self.inventory.degraded.value:
                await record(self.record.id, self.discovered())


class ApiBackend:
    """A Claude or OpenAI-compatible backend: a translator and its heartbeat."""

    def __init__(self, record: BackendRecord, translator: Translator, interval: float) -> None:
        self.record = record
        self.translator = translator
        self.interval = interval
        self.status = Status()
        self.models: list[tuple[str, int | None]] = []

    @property
    def type(self) -> str:
        return self.record.type

    @property
    def name(self) -> str:
        return self.record.name

    def healthy(self) -> bool:
        return self.status.healthy(time.time(), self.interval)

    async def check(self, record: Recorder) -> list[tuple[str, int | None]]:
        """``GET /v1/models`` now, all of it within :data:`CHECK_TIMEOUT`; ``record`` the
        models found, then update the status (so that a backend shown ``connected`` has its
        selected model for routing).

        Returns ``[(model id, size in bytes or None)]``; entries without a string id are
        dropped. An answer the SDK cannot read counts as a broken backend, never as a
        crash of foreman.

        Raises:
            TargetError: the backend could not be reached, refused foreman's key, took
                too long, or answered something that is not a model list.
        """
        kind = f"{self.type} backend"
        try:
            with trio.fail_after(CHECK_TIMEOUT):
                listed = await self.translator.models(timeout=CHECK_TIMEOUT)
            models = [
                (name, size if isinstance(size, int) else None)
                for name, size in listed
                if isinstance(name, str) and name
            ]
        except TargetError as exc:
            error = exc
        except trio.TooSlowError:
            error = TargetTimeout(self.name, f"no model list within {CHECK_TIMEOUT:g}s", kind=kind)
        except Exception as exc:  # an SDK that chokes on a hostile answer
            error = TargetBroken(self.name, f"an unreadable model list ({exc!r})", kind=kind)
        else:
            await record(self.record.id, models)
            if self.status.state != "connected":
                LOGGER.info("backend %s connected: %d models", self.name, len(models))
            self.status.succeeded(len(models))
            self.models = models
            return models
        if self.status.last_error != str(error):
            LOGGER.warning("backend %s: %s", self.name, error)
        self.status.failed(error)
        raise error

    async def heartbeat(self, record: Recorder) -> None:
        """Check every ``interval`` seconds and store the models found; never returns."""
        while True:
            try:
                await self.check(record)
            except TargetError:
                pass  # the status says it
            await trio.sleep(self.interval)
