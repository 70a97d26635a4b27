"""Residency: which models are "loaded", for how long, and who may use them.

A simplified copy of Ollama's scheduler (``server/sched.go``, ``docs/ollama-protocol.md``):

* at most ``max_loaded`` runners; a request for a model that is not loaded waits
  its turn for the single loader (one load at a time, FIFO), which evicts the
  *idle* runner with the shortest keep_alive (ties: name) or, if none is idle,
  waits until one is;
* a request attached to a runner holds a reference until its HTTP response ends;
  the idle timer (``now + keep_alive``) starts when the last reference goes;
  keep_alive 0 unloads as soon as the runner is idle;
* each runner has one slot (``OLLAMA_NUM_PARALLEL=1``): a :class:`trio.Semaphore`;
* expiry is lazy: expired idle runners are dropped whenever the state is looked at.

All times are ``trio.current_time()`` seconds; durations are seconds
(:data:`~._wire.FOREVER` for "forever").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from ._models import ModelSpec

__all__ = ["Runner", "Scheduler"]


@dataclass(eq=False)
class Runner:
    """A loaded (or loading) model.

    Attributes:
        spec: the model.
        duration: keep_alive in seconds, the last one a request set.
        expires_at: trio time the idle runner unloads; while requests are in flight
            it keeps its previous value, as Ollama's ``/api/ps`` shows.
        refcount: requests attached (from scheduling to the end of their response).
        slot: the one parallel slot; generation holds it.
        ready: set when loading finished (or failed: then ``failed`` is True).
    """

    spec: ModelSpec
    duration: float
    expires_at: float
    refcount: int = 0
    slot: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(1))
    ready: trio.Event = field(default_factory=trio.Event)
    failed: bool = False

    @property
    def key(self) -> str:
        return self.spec.parsed.key


class Scheduler:
    """Loaded runners keyed by normalised model name; see the module docstring.

    Args:
        max_loaded: ``OLLAMA_MAX_LOADED_MODELS``.
        load_delay: seconds a load takes.
        default_keep_alive: seconds, ``OLLAMA_KEEP_ALIVE``, for a newly loaded runner
            whose request did not set keep_alive.
    """

    def __init__(self, *, max_loaded: int, load_delay: float, default_keep_alive: float) -> None:
        self.max_loaded = max(1, max_loaded)
        self.load_delay = load_delay
        self.default_keep_alive = default_keep_alive
        self._runners: dict[str, Runner] = {}
        self._loader = trio.Lock()
        self._changed = trio.Event()

    def runners(self) -> list[Runner]:
        """Loaded and loading runners, after dropping expired ones."""
        self._expire()
        return list(self._runners.values())

    async def acquire(self, spec: ModelSpec, keep_alive: float | None) -> Runner:
        """Attach a request to a runner for ``spec``, loading it first if needed.

        ``keep_alive`` (seconds, or None for "not set") overrides the runner's
        duration. Returns once the runner is loaded; the caller must call
        :meth:`release` exactly once. Cancellation while waiting or loading
        leaves no reference behind (an interrupted load is dropped).
        """
        while True:
            self._expire()
            runner = self._runners.get(spec.parsed.key)
            if runner is None:
                async with self._loader:
                    runner = await self._load(spec, keep_alive)
                return runner
            runner.refcount += 1
            if keep_alive is not None:
                runner.duration = keep_alive
            try:
                await runner.ready.wait()
            except BaseException:
                self.release(runner)
                raise
            if not runner.failed:
                return runner
            runner.refcount -= 1

    async def _load(self, spec: ModelSpec, keep_alive: float | None) -> Runner:
        key = spec.parsed.key
        while True:
            self._expire()
            if (runner := self._runners.get(key)) is not None:  # loaded while we queued
                runner.refcount += 1
                if keep_alive is not None:
                    runner.duration = keep_alive
                return runner  # loads are serialised: it is ready
            if len(self._runners) < self.max_loaded:
                break
            if (victim := self._victim()) is not None:
                self._drop(victim)
                continue
            changed = self._changed
            await changed.wait()
        duration = self.default_keep_alive if keep_alive is None else keep_alive
        runner = Runner(spec, duration, trio.current_time() + duration, refcount=1)
        self._runners[key] = runner
        self._notify()
        try:
            await trio.sleep(self.load_delay)
        except BaseException:
            runner.failed = True
            runner.ready.set()
            self._drop(runner)
            raise
        runner.ready.set()
        return runner

    def release(self, runner: Runner) -> None:
        """Detach one request; the last one starts the idle timer (sync, safe in ``finally``)."""
        runner.refcount -= 1
        if runner.refcount > 0:
            return
        runner.expires_at = trio.current_time() + runner.duration
        if runner.duration <= 0:
            self._drop(runner)
        self._notify()

    def unload(self, spec: ModelSpec) -> None:
        """Ollama's unload call (keep_alive 0, no input): unload now, or when idle if busy."""
        runner = self._runners.get(spec.parsed.key)
        if runner is None:
            return
        runner.duration = 0.0
        runner.expires_at = trio.current_time()
        if runner.refcount == 0:
            self._drop(runner)

    def unload_all(self) -> None:
        """Forget every runner, as a restarted Ollama would (requests in flight finish)."""
        self._runners.clear()
        self._notify()

    def _victim(self) -> Runner | None:
        ordered = sorted(self._runners.values(), key=lambda r: (r.duration, r.spec.parsed.display))
        return next((r for r in ordered if r.refcount == 0), None)

    def _drop(self, runner: Runner) -> None:
        if self._runners.get(runner.key) is runner:
            del self._runners[runner.key]
            self._notify()

    def _expire(self) -> None:
        try:
            now = trio.current_time()
        except RuntimeError:  # looked at from outside trio: nothing can have expired "now"
            return
        for runner in list(self._runners.values()):
            if runner.refcount == 0 and runner.expires_at <= now:
                self._drop(runner)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
