"""The tags poller: the target's model inventory, kept in memory through outages."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

import trio
from trio_util import AsyncBool, AsyncValue

from ...dataplane.errors import ModelNotFound, TargetError, TargetStatus
from ...dataplane.names import normalize
from .target import Target

__all__ = ["Inventory"]

LOGGER = logging.getLogger("foreman.backends.ollama.inventory")

#: Seconds between polls while the target is unreachable (or the interval, if shorter):
#: recovery shows within seconds, not a whole poll interval later.
DEGRADED_INTERVAL = 5.0


class Inventory:
    """What ``GET /api/tags`` last said, and whether the target is reachable.

    Attributes:
        models: normalised name (:func:`foreman.dataplane.names.normalize`) → display name
            (``llama3.2:latest``), from the last successful poll; kept when a
            poll fails.
        body: the bytes of the last successful ``/api/tags`` answer.
        degraded: True while the last poll failed (the target is unreachable or
            answering errors); set back to False by the first poll that succeeds.
        last_success: wall-clock time (Unix seconds) of the last successful poll, or None.
        last_error: why the last poll failed, or None.
        last_poll: wall-clock time (Unix seconds) the last poll finished, or None.
        polls: how many polls have finished, successful or not.

    Args:
        target: where to poll.
        interval: seconds between polls.
        on_reachable: called on every unreachable → reachable transition.
    """

    def __init__(
        self, target: Target, interval: float, *, on_reachable: Callable[[], None] = lambda: None
    ) -> None:
        self._target = target
        self._interval = interval
        self._on_reachable = on_reachable
        self.models: dict[str, str] = {}
        self.body: bytes | None = None
        self.degraded = AsyncBool(False)
        self.last_success: float | None = None
        self.last_error: TargetError | None = None
        self.last_poll: float | None = None
        self.polls = AsyncValue(0)
        self._polling = False
        self._kick = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll every ``interval`` seconds, or at once when :meth:`refresh` asks; never returns.

        Supports ``await nursery.start(inventory.run)``: ``started()`` comes
        after the first poll, successful or not, so foreman can start degraded.
        While degraded it polls every :data:`DEGRADED_INTERVAL` seconds.
        """
        while True:
            await self.poll()
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            interval = self._interval
            if self.degraded.value:
                interval = min(interval, DEGRADED_INTERVAL)
            with trio.move_on_after(interval):
                await self._kick.wait()
            self._kick = trio.Event()

    async def poll(self) -> None:
        """Fetch ``/api/tags`` once and update the inventory and the degraded flag."""
        self._polling = True
        try:
            body, answer = await self._target.get_json("/api/tags")
            models = {}
            for entry in answer["models"]:
                name = entry.get("model") or entry["name"]
                key = normalize(name)
                if key is not None:
                    models[key] = name
        except (TargetError, KeyError, TypeError, AttributeError) as exc:
            error = (
                exc
                if isinstance(exc, TargetError)
                else TargetStatus(self._target.url, f"an unexpected /api/tags shape ({exc!r})", 200)
            )
            if not self.degraded.value or str(error) != str(self.last_error):
                LOGGER.warning(
                    "target degraded: %s (keeping %d known models)", error, len(self.models)
                )
            self.last_error = error
            self.degraded.value = True
        else:
            was_degraded = self.degraded.value or self.last_success is None
            if self.degraded.value:
                LOGGER.info("target reachable again: %s, %d models", self._target.url, len(models))
            self.models, self.body = models, body
            self.last_success, self.last_error = time.time(), None
            self.degraded.value = False
            if was_degraded:
                self._on_reachable()
        finally:
            self._polling = False
            self.last_poll = time.time()
            self.polls.value += 1

    def kick(self) -> None:
        """Ask for a poll now, without waiting for it (a relay just failed, say)."""
        self._kick.set()

    async def refresh(self) -> None:
        """Wait for a poll that starts after this call (at once, or right after the
        one under way, whose answer may predate a model pulled just now).

        Concurrent callers share that poll.
        """
        wanted = self.polls.value + 1 + int(self._polling)
        self._kick.set()
        await self.polls.wait_value(lambda n: n >= wanted)

    def knows(self, model: str) -> bool:
        """Whether ``model`` (any spelling Ollama accepts) is in the inventory."""
        return normalize(model) in self.models

    async def require(self, model: str) -> None:
        """Check that the target has ``model``; on a miss, re-poll once and check again.

        Raises:
            ModelNotFound: still missing after the re-poll (Ollama's 404 text
                for chat and generate).
            TargetError: the re-poll failed, so foreman cannot tell (503 when
                the target is unreachable).
        """
        if self.knows(model):
            return
        await self.refresh()
        if self.knows(model):
            return
        error = self.last_error
        if self.degraded.value and error is not None:
            raise copy.copy(error)  # one instance per raise: tracebacks differ
        raise ModelNotFound(model)
