"""The service: one root nursery owns the server and every background task.

See ``docs/adr/0005-one-nursery-owns-everything.md``. :func:`open_gateway`
starts the tags poller, the ps residency watcher and the embedder warm-up
supervisor; :func:`run` adds the hypercorn server in the same nursery and, once
the server has drained, cancels the rest.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio
from hypercorn.trio import serve
from trio_util import AsyncValue

from .gate import Gate
from .inventory import Inventory
from .residency import Residency
from .settings import Settings
from .target import Target, open_target

__all__ = ["Gateway", "open_gateway", "run", "serve_until_signalled"]

LOGGER = logging.getLogger("foreman")


@dataclass
class Gateway:
    """Everything a request handler needs, built once per service.

    ``nursery`` is the root nursery: relay pumps run there so that the task
    holding the gate can outlive the handler that started it.
    """

    settings: Settings
    target: Target
    nursery: trio.Nursery
    gate: Gate
    inventory: Inventory
    residency: Residency
    embeds_in_flight: int = 0


@asynccontextmanager
async def open_gateway(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[Gateway]:
    """Open the target client and start the watchers; yield the :class:`Gateway`.

    On entry the first ``/api/tags`` poll has finished (successfully or not:
    an unreachable target means starting degraded, never failing). On exit
    every background task is cancelled.

    Args:
        settings: foreman's settings.
        transport: replaces the network to the target (tests use the stand-in's).
    """
    async with open_target(settings, transport=transport) as target, trio.open_nursery() as nursery:
        gate = Gate(settings.max_queue)
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
        yield Gateway(settings, target, nursery, gate, inventory, residency)
        nursery.cancel_scope.cancel()


async def run(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    transport: httpx.AsyncBaseTransport | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve foreman until ``shutdown_trigger`` returns, then drain and stop.

    After the trigger, hypercorn stops accepting connections and gives
    in-flight requests ``settings.grace`` seconds to finish before cancelling
    them; as soon as none is left the server stops (idle keep-alive
    connections do not hold it up); then the watchers are cancelled and this
    returns.

    Supports ``urls = await nursery.start(partial(run, settings, shutdown_trigger=...))``:
    ``started()`` passes the bound URLs (with the real port when ``listen`` ends in ``:0``).
    """
    from .app import InFlight, create_app  # the app imports Gateway from here

    async with open_gateway(settings, transport=transport) as gateway:
        app = InFlight(create_app(gateway))
        config = settings.hypercorn()
        server_done, draining = trio.Event(), trio.Event()

        async def trigger() -> None:
            await shutdown_trigger()
            draining.set()

        async def serve_app(*, task_status: trio.TaskStatus[list[str]]) -> None:
            with trio.CancelScope() as scope:
                gateway.nursery.start_soon(_stop_when_drained, draining, app.in_flight, scope)
                await serve(app, config, shutdown_trigger=trigger, task_status=task_status)
            server_done.set()

        urls: list[str] = await gateway.nursery.start(serve_app)
        LOGGER.info("serving on %s, target %s", ", ".join(urls), settings.ollama_url)
        task_status.started(urls)
        await server_done.wait()
    LOGGER.info("stopped")


async def _stop_when_drained(
    draining: trio.Event, in_flight: AsyncValue[int], server: trio.CancelScope
) -> None:
    # hypercorn waits out the grace period for idle keep-alive connections of
    # quart apps too; once no request is in flight there is nothing to wait for.
    await draining.wait()
    await in_flight.wait_value(0)
    server.cancel()


async def serve_until_signalled(settings: Settings) -> None:
    """Run foreman until SIGINT or SIGTERM; a second signal stops it without waiting."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            first = trio.Event()

            async def watch_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not first.is_set():
                        LOGGER.info(
                            "%s: draining, in-flight requests get %gs", name, settings.grace
                        )
                        first.set()
                    else:
                        LOGGER.warning("%s again: stopping now", name)
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            await run(settings, shutdown_trigger=first.wait)
            nursery.cancel_scope.cancel()
