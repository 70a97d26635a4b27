"""Which gates foreman uses, chosen at start: in-process (SQLite, one process) or the
cluster's (PostgreSQL, several replicas; ADR 21)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from .gate import Gate

__all__ = ["run_gates"]


async def run_gates(
    settings: Any,
    store: Any,
    replica: str,
    *,
    task_status: trio.TaskStatus[Callable[[str], Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Choose the gates at start: ``task_status.started(new_gate)``, where
    ``new_gate(name)`` makes the gate of the Ollama server ``name`` (its URL).

    With SQLite (one process) that is the in-process :class:`Gate` and this returns at
    once; with PostgreSQL (several replicas) it is
    :class:`~foreman.dataplane.clustergate.ClusterGate`, and this listens for the
    cluster's hand-overs until cancelled.
    """
    if not store.shared:
        task_status.started(lambda name: Gate(settings.max_queue, settings.max_waiting_bytes))
        return
    from .clustergate import ClusterGates  # psycopg only loads with a database URL

    gates = ClusterGates(store, replica, settings.max_queue, settings.max_waiting_bytes)
    await gates.run(task_status=task_status)
