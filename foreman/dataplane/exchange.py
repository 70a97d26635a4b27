"""One HTTP request as foreman sees it: for the access log and for shutdown."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import trio

__all__ = ["Exchange"]

ACCESS = logging.getLogger("foreman.access")
PROBES = frozenset({"/healthz", "/readyz"})


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
    client: str = "-"
    request_id: str = ""
    user: str = "-"  # who the bearer key says the client is (foreman.users)
    route: str = "other"  # the metrics label (:func:`foreman.control.metrics.route_label`)
    model: str | None = None
    backend: str | None = None  # the route, "backend/model" (foreman.dataplane.routing)
    echo: tuple[bytes, bytes] | None = None  # the answer's model, renamed (relay.rename)
    status: int | None = None
    gate_wait: float | None = None
    outcome: str = "done"
    response_started: bool = False  # the status line is sent
    response_complete: bool = False  # the last body message is being sent
    ndjson: bool = False  # the answer is an NDJSON stream
    first_byte: float | None = None  # when the status line was sent
    count_tokens: bool = False  # a chat or generate: read its counts from final_line
    final_line: bytes | None = None  # the answer's last object (a whole body, or a line)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    shutdown: bool = False  # cancelled because foreman's grace period ended

    def log(self, now: float) -> None:
        """Write the one access-log record of this request (``foreman.access``, INFO;
        DEBUG for a ``/healthz`` or ``/readyz`` answered 200).

        The fields go into the message and, for JSON logs, in as keys
        (see :mod:`foreman.logs`).
        """
        # a health probe that finds foreman well is logged at DEBUG: probes come every few s
        probe = self.path in PROBES and self.status == 200
        level = logging.DEBUG if probe else logging.INFO
        if not ACCESS.isEnabledFor(level):
            return
        duration = now - self.started
        ACCESS.log(
            level,
            "%s %s %s %s model=%s backend=%s status=%s gate_wait=%s duration=%.3fs outcome=%s"
            " id=%s",
            self.client,
            self.user,
            self.method,
            _printable(self.path),  # a decoded %0a must not start a forged line
            _printable(self.model or "-"),
            self.backend or "-",
            self.status if self.status is not None else "-",
            "-" if self.gate_wait is None else f"{self.gate_wait:.3f}s",
            duration,
            self.outcome,
            self.request_id,
            extra={
                "client": self.client,
                "user": self.user,
                "request_id": self.request_id,
                "method": self.method,
                "path": self.path,
                "model": self.model,
                "backend": self.backend,
                "status": self.status,
                "gate_wait": None if self.gate_wait is None else round(self.gate_wait, 6),
                "duration": round(duration, 6),
                "outcome": self.outcome,
            },
        )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n`` as ``\\x0a``): one record, one line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
