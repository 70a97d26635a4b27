"""The job queue's tasks: the batch worker, the embed worker, and the janitor; the
webhook sender is in :mod:`foreman.jobs.webhooks`, one job's run at the target and its
artifacts in :mod:`foreman.jobs.execution`.

The shape (``docs/adr/0010-the-queue.md``)::

    POST /jobs ──► store (queued) ──► batch worker ── gate.hold(lane) ──► target
                                      [one task per target; the gate's lanes put
                                       synchronous /api/chat callers first]
    state change ──► store (delivery row, same transaction) ──► webhook sender ──► receiver

Every task is started in the root nursery by :meth:`Jobs.run`, which supports
``await nursery.start(jobs.run)``. A job's run is cancelled by ``DELETE /jobs/{id}``
(its upstream request is aborted and the gate freed at once) and by foreman's
shutdown (the job then goes back to ``queued`` when foreman starts again).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx2
import trio

from ..backends.ollama.inventory import Inventory
from ..backends.ollama.target import Target
from ..dataplane.errors import GateLost
from ..dataplane.gate import Gate
from ..settings import Settings
from ..store import REPLICA, Store, StoreUnavailable
from ..tasks import supervised
from . import records
from .execution import Artifacts, execute
from .records import Job
from .replicas import LEASE, LOOK_AGAIN, keep_leases
from .webhooks import send_webhooks

if TYPE_CHECKING:
    from ..users import User

__all__ = ["Jobs"]

LOGGER = logging.getLogger("foreman.jobs")

CHATS = ("chat", "generate")
EMBEDS = ("embed",)


class Jobs:
    """The durable job queue of one gateway.

    Args:
        settings: foreman's settings.
        target, gate, inventory: those of the builtin Ollama backend (the gateway's).
        store: the open store.
        webhook_transport: replaces the network for webhooks (tests).
    """

    def __init__(
        self,
        settings: Settings,
        target: Target,
        gate: Gate,
        inventory: Inventory,
        store: Store,
        *,
        webhook_transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.target, self.gate, self.inventory = target, gate, inventory
        self.store = store
        self.settings = settings
        self.shared = store.shared  # other replicas run jobs too (foreman.jobs.replicas)
        self._claim: tuple[Any, ...] = (REPLICA, LEASE) if self.shared else ()
        self.artifacts = Artifacts(store, settings.data_path, shared=self.shared)
        self.running: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        self.depths = {"interactive": 0, "batch": 0}
        self._running_chat: Job | None = None  # the chat or generate job holding the slot
        #: jobs ended by this process, by state (``/metrics``)
        self.finished = {"succeeded": 0, "failed": 0, "cancelled": 0}
        self._changed = trio.Event()  # the queue changed: workers look again
        self.delivery_due = trio.Event()  # set when a delivery is due (foreman.jobs.webhooks)
        self.webhook_transport = webhook_transport
        self._epoch = time.time() - trio.current_time()  # see now(); built inside trio
        self._nursery: trio.Nursery | None = None

    @property
    def chat_job(self) -> str | None:
        """The id of the chat or generate job holding the slot now, if any."""
        return None if self._running_chat is None else self._running_chat.id

    def now(self) -> float:
        """Wall-clock seconds since the Unix epoch, read off trio's clock.

        Timers (``trio.sleep``) and the stored times they are compared with
        (webhook retries, retention) then run on one clock, which under a test's
        ``MockClock`` jumps with it.
        """
        return self._epoch + trio.current_time()

    # --- what the routes call ---------------------------------------------------------

    async def submit(self, fields: list[dict[str, Any]]) -> list[Job] | None:
        """Store new queued jobs, all or none (see :func:`records.insert_jobs`).

        Returns them, or None when they would take the queue past ``FOREMAN_MAX_JOBS``.
        """
        rows = [{"id": secrets.token_hex(12), **job} for job in fields]

        def insert(db: Any) -> tuple[list[Job] | None, dict[str, int]]:
            return records.insert_jobs(db, rows, self.settings.max_jobs), records.queue_depths(db)

        stored, self.depths = await self.store.call(insert)  # one trip to the store thread
        self._wake(deliveries=any(row["webhook_url"] for row in rows))
        return stored

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job; returns it (None: no such job).

        A running job's upstream request is aborted now; its state turns
        ``cancelled`` as soon as its worker has let go (well within a second).
        """
        if await self.store.call(
            records.transition, job_id, "cancelled", only_from=("queued",)
        ):  # a queued one: cancelled now; a running one: by its worker, below
            self.finished["cancelled"] += 1
        run = self.running.get(job_id)
        if run is None and self.shared:  # running on another replica: it stops it (leases)
            await self.store.call(records.transition, job_id, "cancelled", only_from=("running",))
        if run is not None:
            scope, finished = run
            scope.cancel()
            with trio.move_on_after(1.0):
                await finished.wait()
        await self._touched()
        return await self.store.call(records.get_job, job_id)

    async def recent(self, user: User, limit: int) -> list[Job]:
        """The ``limit`` newest jobs ``user`` may see (their own; every one for an admin)."""
        owner = None if user.is_admin else user.name
        return await self.store.call(
            lambda db: records.list_jobs(
                db, state=None, priority=None, limit=limit, before=None, owner=owner
            )
        )

    def running_chat_of(self, user: User) -> str | None:
        """The id of the chat job holding the slot now, if ``user`` may see it."""
        job = self._running_chat
        return job.id if job is not None and job.visible_to(user.name, user.is_admin) else None

    # --- the tasks -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover jobs a dead process left running, then run the queue's tasks; never returns.

        Supports ``await nursery.start(jobs.run)``: ``started()`` comes at once (a faulty
        store delays the queue, never foreman's start); the workers start once recovery is
        done. Each loop runs under :func:`~foreman.tasks.supervised`: one that raises starts
        again instead of ending the root nursery.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await supervised("the job queue's recovery", self._recover, self.store)
            for name, task in (
                ("the chat job worker", self._chat_worker),
                ("the embed job worker", self._embed_worker),
                ("the webhook sender", partial(send_webhooks, self)),
                ("the job janitor", self._janitor),
            ):
                nursery.start_soon(supervised, name, task, self.store)
            if self.shared:
                max_attempts = self.settings.job_max_attempts
                nursery.start_soon(keep_leases, self, REPLICA, max_attempts)

    async def _recover(self) -> None:
        recovered = await self.store.call(
            records.recover_interrupted,
            self.settings.job_max_attempts,
            time.time() if self.shared else None,  # only jobs no live replica holds
        )
        for job in recovered:
            LOGGER.warning("job %s was interrupted by foreman's stop: now %s", job.id, job.state)
        await self._touched()

    async def _touched(self) -> None:
        """The queue changed: refresh the depths and wake the workers and the sender."""
        self.depths = await self.store.call(records.queue_depths)
        self._wake(deliveries=True)

    def _wake(self, *, deliveries: bool) -> None:
        """Wake the workers (they look for work again) and, if asked, the webhook sender."""
        self._changed.set()
        self._changed = trio.Event()
        if deliveries:
            self.delivery_due.set()
            self.delivery_due = trio.Event()

    async def _wait_for(self, endpoints: tuple[str, ...]) -> Job:
        """The next queued job of these endpoints, once there is one, the target is up and
        the store works (a job could not save its answer).

        Waits on events only (a submission, a cancellation, the target coming back),
        never on a timer: an idle queue costs nothing.
        """
        degraded = self.inventory.degraded
        while True:
            changed = self._changed
            job = await self.store.call(records.peek_next, endpoints)
            if job is None:
                with trio.move_on_after(LOOK_AGAIN if self.shared else math.inf):
                    await changed.wait()
            elif degraded.value:  # unreachable is transient: the jobs wait
                await degraded.wait_value(False)
            elif self.store.problem.value is not None:  # so is a full disk
                await self.store.wait_working()
            else:
                return job

    async def _chat_worker(self) -> None:
        """Run chat and generate jobs one at a time, through the gate's lanes.

        A job whose slot of the cluster's gate was lost while it ran (:class:`GateLost`:
        its chat was cancelled) goes back to the queue, its attempt not spent (:meth:`_run`).
        """
        while True:
            job = await self._wait_for(CHATS)
            try:
                async with self.gate.hold(lane=job.priority):  # type: ignore[arg-type]
                    # the best job now, which may not be the one waited for
                    claimed = await self.store.call(records.claim_next, CHATS, *self._claim)
                    if claimed is not None:
                        await self._run_chat(claimed)
            except GateLost as exc:
                LOGGER.warning("chat job: gate lost (%s); it goes back to the queue", exc.reason)

    async def _run_chat(self, job: Job) -> None:
        self._running_chat = job
        try:
            await self._run(job)
        finally:
            self._running_chat = None

    async def _embed_worker(self) -> None:
        """Run embed jobs, ``FOREMAN_EMBED_JOB_CONCURRENCY`` at a time, beside the gate."""
        # a semaphore, not a CapacityLimiter: the slot is released by the job's own task
        slots = trio.Semaphore(max(1, self.settings.embed_job_concurrency))
        async with trio.open_nursery() as nursery:
            while True:
                await self._wait_for(EMBEDS)
                await slots.acquire()
                try:
                    job = await self.store.call(records.claim_next, EMBEDS, *self._claim)
                except StoreUnavailable:  # running embed jobs go on; new ones wait
                    slots.release()
                    await self.store.wait_working()
                    continue
                if job is None:
                    slots.release()
                    continue
                nursery.start_soon(self._run_released, job, slots)

    async def _run_released(self, job: Job, slots: trio.Semaphore) -> None:
        try:
            await self._run(job)
        finally:
            slots.release()

    async def _run(self, job: Job) -> None:
        """Run one claimed job to its next state.

        A job the store or the disk failed (its artifact or its new state could not be
        written), or that foreman stopped under, goes back to the queue, its attempt not
        spent; a new state that cannot be written now is written once the store works
        again, without holding the gate.
        """
        scope, finished = trio.CancelScope(), trio.Event()
        self.running[job.id] = (scope, finished)
        outcome: tuple[str, dict[str, Any]] | None = None
        try:
            with scope:
                outcome = await execute(
                    job, self.target, self.inventory, self.settings, self.artifacts
                )
        except (OSError, StoreUnavailable) as exc:
            if isinstance(exc, OSError):
                self.store.failed(f"cannot write job artifacts: {exc}")
            LOGGER.warning("job %s: %s; it goes back to the queue", job.id, exc)
            outcome = ("queued", {})
        except Exception as exc:  # a bug must not stop the worker
            LOGGER.exception("job %s failed inside foreman", job.id)
            outcome = ("failed", {"error": f"foreman: internal error: {exc}"})
        finally:
            del self.running[job.id]
            if outcome is None:  # cancelled: by its user, or by foreman stopping (requeued)
                outcome = ("cancelled", {}) if scope.cancel_called else ("queued", {})
            state, changes = outcome
            if state == "queued":  # the target vanished: try again, attempt not spent
                changes = {"attempts": job.attempts - 1, "started_at": None, **changes}
            with trio.CancelScope(shield=True):
                try:
                    await self._settle(job.id, state, changes)
                except StoreUnavailable:  # later, from the queue's nursery
                    assert self._nursery is not None
                    self._nursery.start_soon(self._settle_later, job.id, state, changes)
                finished.set()
        LOGGER.info("job %s (%s %s): %s", job.id, job.endpoint, job.model, outcome[0])

    async def _settle(self, job_id: str, state: str, changes: dict[str, Any]) -> None:
        await self.store.call(  # unless another replica cancelled it meanwhile
            records.transition, job_id, state, only_from=("running",), **changes
        )
        if state in self.finished:
            self.finished[state] += 1
        await self._touched()

    async def _settle_later(self, job_id: str, state: str, changes: dict[str, Any]) -> None:
        """Write a job's new state once the store works (a stop before then leaves the
        job ``running``, which the next start puts back in the queue)."""
        while True:
            await self.store.wait_working()
            try:
                await self._settle(job_id, state, changes)
                return
            except StoreUnavailable:
                continue

    # --- retention ---------------------------------------------------------------------

    async def _janitor(self) -> None:
        """Delete finished jobs and their artifacts after ``FOREMAN_JOB_RETENTION``."""
        period = min(3600.0, max(1.0, self.settings.job_retention / 10))
        while True:
            paths = await self.store.call(
                records.purge_finished, self.now() - self.settings.job_retention
            )
            if paths:
                await trio.to_thread.run_sync(self.artifacts.remove, paths)
                LOGGER.info("janitor: removed %d artifacts of old jobs", len(paths))
            await trio.sleep(period)
