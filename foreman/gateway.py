"""The gateway: everything a request handler needs, built once per service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from trio_util import AsyncValue

from .backends.ollama.inventory import Inventory
from .backends.ollama.residency import Residency
from .backends.ollama.target import Target
from .backends.runtime import OllamaBackend
from .control.metrics import Metrics
from .dataplane.exchange import Exchange
from .dataplane.gate import Gate
from .settings import Settings

if TYPE_CHECKING:
    from .backends import Backends
    from .jobs import Jobs
    from .store import Store
    from .store.health import StoreHealth
    from .users import Users

__all__ = ["Gateway"]


@dataclass
class Gateway:
    """The service's shared state.

    ``nursery`` is the root nursery (background tasks live there).
    ``in_flight`` counts HTTP requests until their last byte is sent; ``live``
    holds them, so that :meth:`end_grace` can reach each one.
    """

    settings: Settings
    target: Target
    nursery: trio.Nursery
    gate: Gate
    inventory: Inventory
    residency: Residency
    builtin: OllamaBackend  # the backend of FOREMAN_OLLAMA_URL (target, gate, ... above)
    store: Store | None = None  # the database (None: none, as in unit tests)
    jobs: Jobs | None = None  # the job queue (None: not started, as in unit tests)
    users: Users | None = None  # the API keys (None: only FOREMAN_TOKEN, as in unit tests)
    backends: Backends | None = None  # every backend (None: only the target, as in unit tests)
    store_health: StoreHealth | None = None  # the database's reachability (None: unit tests)
    metrics: Metrics = field(default_factory=Metrics)
    in_flight: AsyncValue[int] = field(default_factory=lambda: AsyncValue(0))
    live: set[Exchange] = field(default_factory=set)
    draining: bool = False  # shutting down: answers say Connection: close, as Go's do

    @property
    def embeds_in_flight(self) -> int:
        """Embed requests at the builtin backend now."""
        return self.builtin.embeds_in_flight

    def __post_init__(self) -> None:
        self.metrics.watch(self)

    def end_grace(self) -> None:
        """foreman's grace period is over: cancel every request still in flight.

        Each one then ends as well as it still can: a request waiting at the
        gate gets Ollama's 503, a stream gets a final ``{"error": ...}`` line.
        """
        for exchange in self.live:
            exchange.shutdown = True
            exchange.cancel_scope.cancel()
