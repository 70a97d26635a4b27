"""Backends: the upstream LLM servers foreman routes to, and the tasks that keep them.

The registry lives in the store (:mod:`.registry`); :class:`Backends` keeps the
active ones running, one cancel scope each in the root nursery::

    root nursery
    ├── builtin Ollama backend (FOREMAN_OLLAMA_URL): poller, ps watcher, warm-up
    │                                               (started by open_gateway, as in v1)
    └── Backends.run
        ├── per added Ollama backend: target, gate, tags poller (= heartbeat), ps watcher
        └── per anthropic / openai backend: translator + heartbeat (GET /v1/models)

Adding, changing or deleting a backend through ``/admin/api/backends`` starts,
restarts or cancels its tasks at once (:meth:`Backends.changed`). Routing a
request's ``model`` to a backend is :mod:`foreman.dataplane.routing`'s.

An ordinary user's backend connects through the outbound address policy
(:mod:`foreman.outbound`); a shared or an admin's one connects anywhere. Ollama
backends share a gate per *server*: the resolved address and port of the endpoint
(:meth:`Backends.gate_for`), so ``localhost``, ``127.0.0.1`` and ``[::1]`` are one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import httpx2
import trio

from ..dataplane.gate import Gate
from ..outbound import AddressPolicy, PolicyBackend, Resolver, policed_transport, resolve
from ..outbound import server_key as outbound_server_key
from ..settings import Settings
from ..store import Store
from . import choices, registry
from .choices import Preferences
from .ollama.inventory import Inventory
from .ollama.residency import Residency
from .ollama.target import open_target
from .registry import BackendRecord, Sealer
from .runtime import ApiBackend, OllamaBackend, Status

__all__ = ["ApiBackend", "Backend", "Backends", "OllamaBackend", "Status"]

LOGGER = logging.getLogger("foreman.backends")

Backend = OllamaBackend | ApiBackend


def make_translator(
    record: BackendRecord, transport: httpx2.AsyncBaseTransport | None, settings: Settings
) -> Any:
    """The translator for an ``anthropic`` or ``openai`` backend (imported on first use:
    the SDKs take a while to import and most gateways never need them)."""
    if record.type == "anthropic":
        from .anthropic import AnthropicBackend as translator_class
    else:
        from .openai import OpenAIBackend as translator_class
    return translator_class(
        record.name,
        record.endpoint,
        record.api_key,
        transport=transport,
        timeout=settings.response_timeout,
        connect_timeout=settings.connect_timeout,
    )


class Backends:
    """Every backend: the records, the running ones, and each user's preferences.

    Args:
        settings: foreman's settings (timeouts, ``heartbeat_interval``).
        store: the open store.
        sealer: decrypts API keys.
        builtin: the running backend of ``FOREMAN_OLLAMA_URL`` (its tasks are the
            caller's).
        transports: endpoint URL → transport replacing the network to it (tests).
        resolver: resolves host names, for the address policy and the gates (tests).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        sealer: Sealer,
        builtin: OllamaBackend,
        *,
        transports: Mapping[str, httpx2.AsyncBaseTransport] | None = None,
        resolver: Resolver = resolve,
        new_gate: Callable[[str], Gate] | None = None,
    ) -> None:
        self.settings, self.store, self.sealer = settings, store, sealer
        self._new_gate = new_gate or (
            lambda _: Gate(settings.max_queue, settings.max_waiting_bytes)
        )  # the cluster's gates with several replicas (foreman.dataplane.gates.run_gates)
        self.builtin = builtin
        self.records: dict[int, BackendRecord] = {builtin.record.id: builtin.record}
        self.running: dict[int, Backend] = {builtin.record.id: builtin}
        self.selected: dict[int, str | None] = {builtin.record.id: builtin.record.selected_model}
        self.preferences: dict[str, Preferences] = {}
        self.failures: dict[int, str] = {}  # why a backend's tasks could not run
        self._scopes: dict[int, trio.CancelScope] = {}
        self._gates: dict[str, Gate] = {}  # by server (see gate_for); the builtin's in run()
        self.resolver = resolver
        self.policy = AddressPolicy.of(settings)
        self._changing = trio.Lock()
        self._transports = dict(transports or {})
        self._nursery: trio.Nursery | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every active backend's tasks; never returns.

        Supports ``await nursery.start(backends.run)``: ``started()`` comes once every
        backend's tasks are started (not once they are connected: that is their status).
        """
        self.preferences = await self.store.call(choices.all_preferences)
        self._gates[await self.server_key(self.builtin.target.url)] = self.builtin.gate
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.builtin.record_discoveries, self.record)
            for record in await self.store.call(registry.list_backends, self.sealer):
                self.records[record.id] = record
                self.selected[record.id] = record.selected_model
                if not record.builtin and record.is_active:
                    await nursery.start(self._serve, record)
            task_status.started()

    async def changed(self, backend_id: int) -> None:
        """A backend was added, changed or deleted in the store: follow it in memory.

        Its tasks are restarted only when what they connect with changed (type, endpoint,
        API key) or it was switched on or off; a rename or a new default only updates the
        record. Calls are serialised: two changes at once never leave two task trees.
        """
        assert self._nursery is not None, "Backends.run() is not running"
        async with self._changing:
            record = await self.store.call(registry.get_backend, self.sealer, backend_id)
            old = self.records.get(backend_id)
            if record is None:
                self._stop(backend_id)
                self.records.pop(backend_id, None)
                self.selected.pop(backend_id, None)
                self.preferences = {  # the store set these to NULL (ON DELETE SET NULL)
                    name: replace(p, default_backend_id=None)
                    if p.default_backend_id == backend_id
                    else p
                    for name, p in self.preferences.items()
                }
                return
            self.records[backend_id] = record
            self.selected[backend_id] = record.selected_model
            running = self.running.get(backend_id)
            if record.builtin or (
                old is not None
                and running is not None
                and record.is_active
                and (old.type, old.endpoint, old.api_key, old.owner)
                == (record.type, record.endpoint, record.api_key, record.owner)
            ):
                (running or self.builtin).record = record
                return
            self._stop(backend_id)
            if record.is_active:
                await self._nursery.start(self._serve, record)

    def _stop(self, backend_id: int) -> None:
        scope = self._scopes.pop(backend_id, None)
        if scope is not None:
            scope.cancel()
        self.running.pop(backend_id, None)
        self.failures.pop(backend_id, None)

    async def server_key(self, endpoint: str) -> str:
        """The server behind ``endpoint``: its resolved address and port (see
        :func:`foreman.outbound.server_key`)."""
        return await outbound_server_key(endpoint, self.resolver)

    async def gate_for(self, endpoint: str) -> Gate:
        """The gate of the Ollama server at ``endpoint``: one per server (its resolved
        address and port, resolved again at every start of a backend), however many
        backends name it, however they spell it and however often they restart (one
        chat at a time, always)."""
        key = await self.server_key(endpoint)
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = self._new_gate(key)
        return gate

    async def _serve(
        self,
        record: BackendRecord,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run one added backend until its cancel scope is cancelled.

        A backend that cannot run (a bad endpoint, an SDK that fails) is logged and
        reported in its status; it never takes foreman down.
        """
        started = False

        def ready() -> None:
            nonlocal started
            started = True
            task_status.started()

        with trio.CancelScope() as scope:
            self._scopes[record.id] = scope
            transport = self._transports.get((record.endpoint or "").rstrip("/"))
            try:
                policed = transport is None and await self._policed(record)
                network = PolicyBackend(self.policy, resolver=self.resolver) if policed else None
                if record.type == "ollama":
                    await self._serve_ollama(record, transport, network, ready)
                else:
                    if network is not None:
                        transport = policed_transport(network)
                    await self._serve_api(record, transport, ready)
            except Exception as exc:
                LOGGER.error("backend %s stopped: %s", record.name, exc, exc_info=True)
                self.failures[record.id] = f"cannot run: {exc}"
            finally:
                if self._scopes.get(record.id) is scope:
                    del self._scopes[record.id]
                    self.running.pop(record.id, None)
        if not started:
            task_status.started()

    async def _policed(self, record: BackendRecord) -> bool:
        """Whether ``record`` connects through the address policy: it is an ordinary
        user's (a shared or an admin's backend may point anywhere)."""
        if record.owner is None:
            return False
        return not await self.store.call(_owner_is_admin, record.owner)

    async def _serve_ollama(
        self,
        record: BackendRecord,
        transport: Any,
        network: PolicyBackend | None,
        ready: Callable[[], None],
    ) -> None:
        assert record.endpoint is not None
        settings = self.settings.replace(
            ollama_url=record.endpoint, ollama_token=record.api_key, embed_model=None
        )
        interval = self.settings.heartbeat_interval
        async with open_target(settings, transport=transport, network_backend=network) as target:
            gate = await self.gate_for(record.endpoint)
            inventory = Inventory(target, interval)
            residency = Residency(
                target,
                None,
                settings.ps_interval,
                chats_in_flight=lambda: gate.statistics().in_flight,
            )
            backend = OllamaBackend(record, target, gate, inventory, residency, interval)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(inventory.run)
                nursery.start_soon(residency.watch)
                nursery.start_soon(backend.record_discoveries, self.record)
                self.running[record.id] = backend
                LOGGER.info("backend %s (ollama, %s) started", record.name, record.endpoint)
                ready()

    async def _serve_api(
        self, record: BackendRecord, transport: Any, ready: Callable[[], None]
    ) -> None:
        translator = make_translator(record, transport, self.settings)
        try:
            backend = ApiBackend(record, translator, self.settings.heartbeat_interval)
            self.running[record.id] = backend
            LOGGER.info("backend %s (%s) started", record.name, record.type)
            ready()
            await backend.heartbeat(self.record)
        finally:
            with trio.CancelScope(shield=True):
                await translator.aclose()

    async def record(self, backend_id: int, models: list[tuple[str, int | None]]) -> None:
        """Store what a discovery found (a store error only costs this record)."""
        try:
            self.selected[backend_id] = await self.store.call(
                choices.record_models, backend_id, models, time.time()
            )
        except Exception as exc:  # sqlite3.Error, or the backend was deleted meanwhile
            LOGGER.warning("backend %d: cannot record its models: %s", backend_id, exc)

    # --- what routing and the admin API read ---------------------------------------------

    def visible(self, user_name: str) -> dict[str, Backend]:
        """The running backends a user may route to, by name: shared ones and their own."""
        return {
            backend.name: backend
            for backend in self.running.values()
            if backend.record.owner is None or backend.record.owner == user_name
        }

    def status(self, backend_id: int) -> Status:
        backend = self.running.get(backend_id)
        if backend is None:  # inactive, failed, or starting
            record = self.records.get(backend_id)
            if record is not None and not record.is_active:
                return Status(state="inactive")
            failure = self.failures.get(backend_id)
            if failure is not None:
                return Status(state="unreachable", last_error=failure)
            return Status()
        return backend.status

    def preferences_of(self, user_name: str) -> Preferences:
        return self.preferences.get(user_name) or Preferences()


def _owner_is_admin(db: Any, name: str) -> bool:
    """Whether the user ``name`` (a backend's owner) has the admin role."""
    row = db.execute("SELECT role FROM users WHERE name = ? AND revoked_at IS NULL", (name,))
    found = row.fetchone()
    return found is not None and found[0] == "admin"
