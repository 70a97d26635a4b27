"""Two-slot residency: the ps watcher and the embedder warm-up supervisor.

The target runs ``OLLAMA_MAX_LOADED_MODELS=2``: one slot for the worker model,
one for the embedder, which foreman loads with ``keep_alive: -1`` so that it is
evicted only when nothing else can be. The watcher reads
``/api/ps``; the supervisor (re-)loads the embedder on start, after every
unreachable → reachable transition, and whenever the watcher finds it gone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio
from trio_util import AsyncBool

from ...dataplane.errors import TargetError
from ...dataplane.names import normalize
from .target import Target

__all__ = ["BACKOFF_MAX", "BACKOFF_MIN", "Residency"]

LOGGER = logging.getLogger("foreman.backends.ollama.residency")

#: Seconds between failed warm-ups: doubling from BACKOFF_MIN up to BACKOFF_MAX.
BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0


class Residency:
    """Which models the target has loaded, and the embedder kept warm among them.

    Attributes:
        resident: display names from the last successful ``/api/ps`` (None
            before the first one).
        warm_wanted: True while a warm-up of the embedder is due.
        warmups: successful warm-ups so far.
        last_warmup: wall-clock time (Unix seconds) of the last successful warm-up.
        last_warmup_error: why the last warm-up failed, or None.

    Args:
        target: the Ollama target.
        embed_model: the model to keep warm; None turns warm-up off.
        interval: seconds between ``/api/ps`` polls.
        chats_in_flight: how many chats hold the gate right now.
    """

    def __init__(
        self,
        target: Target,
        embed_model: str | None,
        interval: float,
        *,
        chats_in_flight: Callable[[], int] = lambda: 0,
    ) -> None:
        self._target = target
        self.embed_model = embed_model
        self._interval = interval
        self._chats_in_flight = chats_in_flight
        self.resident: tuple[str, ...] | None = None
        self.warm_wanted = AsyncBool(embed_model is not None)
        self.warmups = 0
        self.last_warmup: float | None = None
        self.last_warmup_error: str | None = None
        self._warned = False
        self._warming = False
        self._warmed_at = -math.inf  # trio time the last warm-up ended
        self._look_again = trio.Event()  # set: poll /api/ps now, not at the next interval
        self._retry_now = trio.Event()  # set: end a warm-up back-off early

    def embedder_resident(self) -> bool | None:
        """Whether the embedder is loaded, per the last ``/api/ps``; None if unknown."""
        if self.embed_model is None or self.resident is None:
            return None
        key = normalize(self.embed_model)
        return any(normalize(name) == key for name in self.resident)

    def request_warmup(self, reason: str, *, now: bool = False) -> None:
        """Ask the supervisor to load the embedder again (requests coalesce).

        ``now`` also cuts short a back-off after a failed warm-up (the target
        just came back, so the next try need not wait).
        """
        if self.embed_model is None:
            return
        if not self.warm_wanted.value:
            LOGGER.info("warm-up of %s requested: %s", self.embed_model, reason)
            self.warm_wanted.value = True
        if now:
            self._retry_now.set()

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll ``/api/ps`` every ``interval`` seconds, and right after a warm-up; never returns.

        A failed poll is left to the tags poller to report (it owns the
        degraded flag) and keeps the last known residency.
        """
        task_status.started()
        while True:
            asked = trio.current_time()
            try:
                _, answer = await self._target.get_json("/api/ps")
                self.resident = tuple(str(m.get("model") or m["name"]) for m in answer["models"])
            except (TargetError, KeyError, TypeError, AttributeError) as exc:
                LOGGER.debug("/api/ps failed: %s", exc)
            else:
                self._check(asked)
            with trio.move_on_after(self._interval):
                await self._look_again.wait()
            self._look_again = trio.Event()

    def _check(self, asked: float) -> None:
        if self.embed_model is None:
            return
        resident = self.resident or ()
        if self._chats_in_flight() and len(resident) == 1:
            if not self._warned:
                LOGGER.warning(
                    "only one model resident (%s) while a chat is in flight: the target is "
                    "not running OLLAMA_MAX_LOADED_MODELS=2, or the embedder %s was evicted",
                    resident[0],
                    self.embed_model,
                )
                self._warned = True
        else:
            self._warned = False
        if self.embedder_resident():
            return
        if not self._warming and asked >= self._warmed_at:  # else: stale, a warm-up is newer
            self.request_warmup("the embedder is not resident")

    async def supervise(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Warm the embedder whenever :attr:`warm_wanted` is set; never returns.

        Each warm-up is ``POST /api/embed`` with ``keep_alive: -1``; a failure
        is retried after a back-off (:data:`BACKOFF_MIN` doubling to
        :data:`BACKOFF_MAX`). Runs beside the server and never blocks serving.
        """
        task_status.started()
        if self.embed_model is None:
            await trio.sleep_forever()
        delay = BACKOFF_MIN
        while True:
            await self.warm_wanted.wait_value(True)
            self.warm_wanted.value = False
            self._warming = True
            try:
                await self._target.warm(self.embed_model)
            except TargetError as exc:
                self._warming = False
                self.last_warmup_error = str(exc)
                LOGGER.warning(
                    "warm-up of %s failed, retrying in %.0fs: %s", self.embed_model, delay, exc
                )
                self.warm_wanted.value = True
                self._retry_now = trio.Event()
                with trio.move_on_after(delay):
                    await self._retry_now.wait()
                delay = BACKOFF_MIN if self._retry_now.is_set() else min(delay * 2, BACKOFF_MAX)
            else:
                self._warming = False
                self.warmups += 1
                self._warmed_at = trio.current_time()
                self._look_again.set()
                self.last_warmup, self.last_warmup_error = time.time(), None
                delay = BACKOFF_MIN
                LOGGER.info("embedder %s is warm (keep_alive -1)", self.embed_model)
