"""The webhook deliveries' rows: the queries the webhook sender runs, in the store's thread.

A delivery row is written with its job's state change (:func:`foreman.jobs.records.transition`);
these functions find the due ones, record each attempt and summarise a job's deliveries.
Each takes the connection first (see :meth:`foreman.store.Store.call`). Times are Unix
seconds.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from .records import shared

__all__ = ["due_deliveries", "mark_delivery", "next_delivery_at", "webhook_summary"]


def webhook_summary(db: sqlite3.Connection, job_id: str) -> dict[str, Any]:
    """``{"deliveries": delivered count, "last_status": status of the last attempt,
    "last_error": why it failed when no status says it}``."""
    delivered = db.execute(
        "SELECT COUNT(*) FROM deliveries WHERE job_id = ? AND delivered_at IS NOT NULL",
        (job_id,),
    ).fetchone()[0]
    last = db.execute(
        "SELECT last_status, last_error FROM deliveries WHERE job_id = ? AND attempts > 0"
        " ORDER BY seq DESC LIMIT 1",
        (job_id,),
    ).fetchone()
    if last is None:
        return {"deliveries": delivered, "last_status": None, "last_error": None}
    return {"deliveries": delivered, "last_status": last[0], "last_error": last[1]}


#: SQL: delivery ``d`` is the oldest one of its job not delivered yet.
_OLDEST_PENDING = (
    "seq = (SELECT MIN(seq) FROM deliveries WHERE job_id = d.job_id AND delivered_at IS NULL)"
)


def due_deliveries(
    db: sqlite3.Connection, now: float, limit: int, claim_for: float | None = None
) -> list[dict[str, Any]]:
    """Deliveries to attempt now: for each job only its oldest one not delivered yet,
    so that a job's webhooks arrive in order.

    ``claim_for`` (several replicas): the deliveries returned are this caller's for that
    many seconds (their ``next_at`` moves on; rows another replica is claiming are
    skipped), so that one replica delivers each; :func:`mark_delivery` then settles them.
    """
    suffix = " FOR UPDATE SKIP LOCKED" if shared(db) else ""
    rows = [
        dict(row)
        for row in db.execute(
            "SELECT * FROM deliveries AS d WHERE delivered_at IS NULL AND next_at <= ?"
            f" AND {_OLDEST_PENDING} ORDER BY next_at LIMIT ?{suffix}",
            (now, limit),
        )
    ]
    if claim_for is not None:
        for row in rows:
            db.execute(
                "UPDATE deliveries SET next_at = ? WHERE seq = ?", (now + claim_for, row["seq"])
            )
    return rows


def next_delivery_at(db: sqlite3.Connection) -> float | None:
    """When the next delivery falls due (seconds since the epoch), None if none is pending.

    Only each job's oldest pending delivery counts: the ones behind it wait for it.
    """
    row = db.execute(
        f"SELECT MIN(next_at) FROM deliveries AS d WHERE delivered_at IS NULL AND {_OLDEST_PENDING}"
    ).fetchone()
    return row[0]


def mark_delivery(
    db: sqlite3.Connection,
    seq: int,
    status: int | None,
    delivered: bool,
    next_at: float,
    error: str | None = None,
) -> None:
    """Record one attempt of delivery ``seq``: its status (None: no answer), why it
    failed when no status says it, and when to try again (``inf``: never)."""
    if delivered:
        db.execute(
            "UPDATE deliveries SET attempts = attempts + 1, last_status = ?, delivered_at = ?,"
            " last_error = NULL WHERE seq = ?",
            (status, time.time(), seq),
        )
    else:
        db.execute(
            "UPDATE deliveries SET attempts = attempts + 1, last_status = ?, next_at = ?,"
            " last_error = ? WHERE seq = ?",
            (status, next_at, error, seq),
        )
