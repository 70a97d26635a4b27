"""The service: one root nursery owns the server and every background task.

See ``docs/adr/0005-one-nursery-owns-everything.md``. :func:`open_gateway`
opens the store and starts the tags poller, the ps residency watcher, the
embedder warm-up supervisor and the job queue's tasks; :func:`run` adds the
hypercorn server (:mod:`foreman.serving`) in the same nursery and, once the server has drained,
cancels the rest.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import httpx2
import trio

from .app import create_app
from .backends import Backends, OllamaBackend
from .backends.ollama.inventory import Inventory
from .backends.ollama.residency import Residency
from .backends.ollama.target import open_target
from .backends.registry import Sealer, ensure_builtin
from .backends.sealing import check_sealed
from .connections import raise_fd_limit, return_big_buffers
from .dataplane.gates import run_gates
from .gateway import Gateway
from .jobs import Jobs
from .outbound import server_key
from .replicas import follow_replicas
from .serving import hypercorn_config, serve
from .settings import Settings
from .store import REPLICA, open_store
from .store.health import StoreHealth
from .users import Users

__all__ = ["Gateway", "open_gateway", "run", "serve_until_signalled"]

LOGGER = logging.getLogger("foreman")


@asynccontextmanager
async def open_gateway(
    settings: Settings,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
    webhook_transport: httpx2.AsyncBaseTransport | None = None,
    backend_transports: Mapping[str, httpx2.AsyncBaseTransport] | None = None,
) -> AsyncIterator[Gateway]:
    """Open the target client and start the watchers; yield the :class:`Gateway`.

    On entry the first ``/api/tags`` poll has finished (successfully or not:
    an unreachable target means starting degraded, never failing). On exit
    every background task is cancelled.

    Args:
        settings: foreman's settings.
        transport: replaces the network to the target (tests use the stand-in's).
        webhook_transport: replaces the network to webhook receivers (tests).
        backend_transports: endpoint URL → transport replacing the network to an
            added backend (tests).
    """
    os.makedirs(settings.data_path, exist_ok=True)
    async with (
        open_target(settings, transport=transport) as target,
        open_store(settings.store_location) as store,
        trio.open_nursery() as nursery,
    ):
        sealer = Sealer(settings.secret_key, settings.data_path)
        await store.call(check_sealed, sealer, allow_unreadable=settings.allow_unreadable_keys)
        await nursery.start(store.watch)
        new_gate = await nursery.start(run_gates, settings, store, REPLICA)  # ADR 21
        gate = new_gate(await server_key(settings.ollama_url))  # as Backends.gate_for keys it
        residency = Residency(
            target,
            settings.embed_model,
            settings.ps_interval,
            chats_in_flight=lambda: gate.statistics().in_flight,
        )
        inventory = Inventory(
            target,
            settings.poll_interval,
            on_reachable=lambda: residency.request_warmup("the target is reachable", now=True),
        )
        await nursery.start(inventory.run)
        await nursery.start(residency.watch)
        await nursery.start(residency.supervise)
        if inventory.degraded.value:
            LOGGER.warning("starting degraded: %s", inventory.last_error)
        else:
            LOGGER.info("target %s has %d models", target.url, len(inventory.models))
        record = await store.call(ensure_builtin, sealer, settings.ollama_url)
        builtin = OllamaBackend(record, target, gate, inventory, residency, settings.poll_interval)
        gateway = Gateway(settings, target, nursery, gate, inventory, residency, builtin)
        gateway.store = store
        gateway.users = Users(store, settings.token)
        await nursery.start(gateway.users.run)
        gateway.backends = Backends(
            settings, store, sealer, builtin, transports=backend_transports, new_gate=new_gate
        )
        await nursery.start(gateway.backends.run)
        await nursery.start(follow_replicas, gateway, store)  # shared users, backends, sessions
        gateway.store_health = StoreHealth(store, REPLICA)
        await nursery.start(gateway.store_health.watch)
        gateway.jobs = Jobs(
            settings, target, gate, inventory, store, webhook_transport=webhook_transport
        )
        await nursery.start(gateway.jobs.run)
        yield gateway
        nursery.cancel_scope.cancel()


async def run(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    transport: httpx2.AsyncBaseTransport | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve foreman until ``shutdown_trigger`` returns, then drain and stop.

    After the trigger, hypercorn stops accepting connections and in-flight
    requests get ``settings.grace`` seconds to finish; then foreman ends what is
    left itself (:meth:`Gateway.end_grace`: a 503 for a chat still waiting, an
    error line for a stream). As soon as no request is left the server stops
    (idle keep-alive connections do not hold it up); then the watchers are
    cancelled and this returns.

    Supports ``urls = await nursery.start(partial(run, settings, shutdown_trigger=...))``:
    ``started()`` passes the bound URLs (with the real port when ``listen`` ends in ``:0``).
    """
    soft, _ = raise_fd_limit()  # systemd's default soft limit is 1,024 descriptors
    return_big_buffers()
    LOGGER.debug("file descriptor limit: %d", soft)
    check_listen(settings.listen)  # fail at once, not after the first poll of the target
    config = hypercorn_config(settings)
    async with open_gateway(settings, transport=transport) as gateway:
        app = create_app(gateway)
        server_done, draining = trio.Event(), trio.Event()

        async def trigger() -> None:
            await shutdown_trigger()
            gateway.draining = True  # answers from now on say Connection: close
            draining.set()

        async def serve_app(*, task_status: trio.TaskStatus[list[str]]) -> None:
            with trio.CancelScope() as scope:
                gateway.nursery.start_soon(_stop_when_drained, gateway, draining, scope)
                await serve(app, config, shutdown_trigger=trigger, task_status=task_status)
            server_done.set()

        urls: list[str] = await gateway.nursery.start(serve_app)
        LOGGER.info("serving on %s, target %s", ", ".join(urls), settings.ollama_url)
        task_status.started(urls)
        await server_done.wait()
    LOGGER.info("stopped")


class CannotListen(Exception):
    """``listen`` cannot be bound: the message says why (``[Errno 98] Address in use``)."""


def check_listen(listen: str) -> None:
    """Bind ``HOST:PORT`` once and let go, so a bad address fails before anything starts.

    Raises:
        CannotListen: the address is in use, not this machine's, or not found.
    """
    host, _, port = listen.rpartition(":")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise CannotListen(str(exc)) from exc


async def _stop_when_drained(gw: Gateway, draining: trio.Event, server: trio.CancelScope) -> None:
    # hypercorn waits out its grace period for idle keep-alive connections too;
    # once no request is in flight there is nothing to wait for.
    await draining.wait()
    with trio.move_on_after(gw.settings.grace):
        await gw.in_flight.wait_value(0)
    gw.end_grace()  # what is left ends now, as well as it can
    await gw.in_flight.wait_value(0)
    server.cancel()


async def serve_until_signalled(
    settings: Settings, *, on_ready: Callable[[list[str]], None] = lambda urls: None
) -> int:
    """Run foreman until SIGINT or SIGTERM; a second signal stops it without waiting.

    Args:
        on_ready: called with the bound URLs once foreman listens.

    Returns:
        the exit status: 0 after a drain, 1 when a second signal forced the stop
        (so that a supervisor knows requests were cut).
    """
    forced = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            first = trio.Event()

            async def watch_signals() -> None:
                nonlocal forced
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not first.is_set():
                        LOGGER.info(
                            "%s: draining, in-flight requests get %gs", name, settings.grace
                        )
                        first.set()
                    else:
                        LOGGER.warning("%s again: stopping now, without draining", name)
                        forced = True
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            done = trio.Event()

            async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
                await run(settings, shutdown_trigger=first.wait, task_status=task_status)
                done.set()

            on_ready(await nursery.start(serve))
            await done.wait()
            nursery.cancel_scope.cancel()
    return 1 if forced else 0
