"""One HTTP request as foreman sees it: for the access log and for shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

__all__ = ["Exchange"]

ACCESS = logging.getLogger("foreman.access")


@dataclass(eq=False)
class Exchange:
    """The state of one request, from its first byte to its last.

    Times are ``trio.current_time()`` seconds. ``outcome`` says how it ended:
    ``done``; ``error`` (foreman answered an error itself, or a stream ended
    with an error line); ``busy`` (the gate's line was full); ``cancelled`` (the
    client went away); ``shutdown`` (foreman's grace period ended first).
    After ``response_started``, errors can only go in-band.
    """

    method: str
    path: str
    started: float
    model: str | None = None
    status: int | None = None
    gate_wait: float | None = None
    outcome: str = "done"
    response_started: bool = False  # the status line is sent
    response_complete: bool = False  # the last body message is being sent
    ndjson: bool = False  # the answer is an NDJSON stream
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    shutdown: bool = False  # cancelled because foreman's grace period ended

    def log(self) -> None:
        """Write the one access-log line of this request (``foreman.access``, INFO)."""
        ACCESS.info(
            "%s %s model=%s status=%s gate_wait=%s duration=%.3fs outcome=%s",
            self.method,
            self.path,
            self.model or "-",
            self.status if self.status is not None else "-",
            "-" if self.gate_wait is None else f"{self.gate_wait:.3f}s",
            trio.current_time() - self.started,
            self.outcome,
        )
