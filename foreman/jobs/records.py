"""The jobs' rows: every query of the job queue, run in the store's thread.

Each function takes the connection first (see :meth:`foreman.store.Store.call`) and
runs inside one transaction. A state change and its webhook delivery are written
in the same transaction (:func:`transition`), so a delivery is never lost or made
up by a crash; the queries that send and settle deliveries are in
:mod:`foreman.jobs.deliveries`. Times are Unix seconds.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from dataclasses import fields as columns_of
from typing import Any

from ..dataplane.jsonwire import dumps, rfc3339

__all__ = [
    "Job",
    "JobState",
    "artifact_content",
    "artifacts_of",
    "claim_next",
    "count_queued",
    "get_job",
    "insert_jobs",
    "list_jobs",
    "not_running",
    "peek_next",
    "position_of",
    "purge_finished",
    "recover_interrupted",
    "renew_leases",
    "transition",
]

JobState = str  # queued | running | succeeded | failed | cancelled
FINISHED = ("succeeded", "failed", "cancelled")

#: pg_try_advisory_xact_lock key of the janitor: one replica purges at a time.
JANITOR_LOCK = 0x666D2D6A616E6974
#: pg_advisory_xact_lock key of submissions: replicas count the queue one at a time.
SUBMIT_LOCK = 0x666D2D7375626D69


def shared(db: Any) -> bool:
    """Whether ``db`` is PostgreSQL, where other replicas write too: rows are locked."""
    return getattr(db, "dialect", "sqlite") == "postgresql"


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``."""

    seq: int
    id: str
    endpoint: str
    request: bytes
    model: str | None
    priority: str
    state: str
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    metadata: dict[str, Any]
    webhook_url: str | None
    base_url: str
    owner: str | None = None  # the submitting user's name; None: stored before owners
    owner_is_admin: bool = True

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        names = {f.name for f in columns_of(cls)}
        values = {k: v for k, v in dict(row).items() if k in names}  # not runner, lease_until
        values["metadata"] = json.loads(values["metadata"])
        values["owner_is_admin"] = bool(values.get("owner_is_admin", True))
        return cls(**values)

    def visible_to(self, name: str, is_admin: bool) -> bool:
        """Whether the user ``name`` sees this job: their own, or every one for an admin."""
        return is_admin or (self.owner is not None and self.owner == name)

    @property
    def url(self) -> str:
        return f"{self.base_url}/jobs/{self.id}"


def insert_jobs(
    db: sqlite3.Connection, jobs: list[dict[str, Any]], max_jobs: int
) -> list[Job] | None:
    """Store new queued jobs, all or none; None when the queued jobs would then be more
    than ``max_jobs``.

    Each of ``jobs`` is ``{"id", "endpoint", "request": bytes, "model", "priority",
    "metadata": dict, "webhook_url", "base_url"}`` and, optionally, ``"owner"`` (a user's
    name) and ``"owner_is_admin"``. On PostgreSQL, submissions of every replica take
    turns (a transaction-level advisory lock), so that two cannot both pass the count.
    """
    if shared(db):
        db.execute("SELECT pg_advisory_xact_lock(?)", (SUBMIT_LOCK,))
    if count_queued(db) + len(jobs) > max_jobs:
        return None
    now = time.time()
    stored = []
    for fields in jobs:
        db.execute(
            "INSERT INTO jobs (id, endpoint, request, model, priority, state, created_at,"
            " metadata, webhook_url, base_url, owner, owner_is_admin)"
            " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
            (
                fields["id"],
                fields["endpoint"],
                fields["request"],
                fields["model"],
                fields["priority"],
                now,
                json.dumps(fields["metadata"]),
                fields["webhook_url"],
                fields["base_url"],
                fields.get("owner"),
                fields.get("owner_is_admin", True),
            ),
        )
        job = get_job(db, fields["id"])
        assert job is not None
        _deliver(db, job, "queued", None, now)
        stored.append(job)
    return stored


def get_job(db: sqlite3.Connection, job_id: str, *, lock: bool = False) -> Job | None:
    """The job, or None; ``lock``: on PostgreSQL, its row stays locked until the commit
    (SQLite has one writer anyway)."""
    suffix = " FOR UPDATE" if lock and shared(db) else ""
    row = db.execute(f"SELECT * FROM jobs WHERE id = ?{suffix}", (job_id,)).fetchone()
    return None if row is None else Job.from_row(row)


def list_jobs(
    db: sqlite3.Connection,
    *,
    state: str | None,
    priority: str | None,
    limit: int,
    before: int | None,
    owner: str | None = None,
) -> list[Job]:
    """Newest first; ``before`` is the cursor (a ``seq``): only jobs older than it;
    ``owner``: only that user's jobs (None: everyone's, for an admin)."""
    clauses, args = [], []
    for column, value in (("state", state), ("priority", priority), ("owner", owner)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if before is not None:
        clauses.append("seq < ?")
        args.append(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = db.execute(f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*args, limit))
    return [Job.from_row(row) for row in rows]


def count_queued(db: sqlite3.Connection) -> int:
    return db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]


def queue_depths(db: sqlite3.Connection) -> dict[str, int]:
    """Queued jobs by lane: ``{"interactive": n, "batch": n}``."""
    depths = {"interactive": 0, "batch": 0}
    for priority, count in db.execute(
        "SELECT priority, COUNT(*) FROM jobs WHERE state = 'queued' GROUP BY priority"
    ):
        depths[priority] = count
    return depths


def position_of(db: sqlite3.Connection, job: Job) -> int:
    """How many queued jobs of the same kind run before ``job`` (0: it is next)."""
    kinds = ("embed",) if job.endpoint == "embed" else ("chat", "generate")
    ahead = 0
    for endpoint in kinds:  # each count is a range of the jobs_lane index
        if job.priority == "batch":
            ahead += db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND endpoint = ?"
                " AND priority = 'interactive'",
                (endpoint,),
            ).fetchone()[0]
        ahead += db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND endpoint = ?"
            " AND priority = ? AND seq < ?",
            (endpoint, job.priority, job.seq),
        ).fetchone()[0]
    return ahead


def peek_next(db: sqlite3.Connection, endpoints: tuple[str, ...]) -> Job | None:
    """The queued job of these endpoints that runs next, without taking it.

    Interactive before batch, then first submitted; one index lookup per lane and endpoint.
    """
    for priority in ("interactive", "batch"):
        rows = [
            db.execute(
                "SELECT * FROM jobs WHERE state = 'queued' AND endpoint = ? AND priority = ?"
                " ORDER BY seq LIMIT 1",
                (endpoint, priority),
            ).fetchone()
            for endpoint in endpoints
        ]
        found = [row for row in rows if row is not None]
        if found:
            return Job.from_row(min(found, key=lambda row: row["seq"]))
    return None


def claim_next(
    db: sqlite3.Connection,
    endpoints: tuple[str, ...],
    runner: str | None = None,
    lease: float | None = None,
) -> Job | None:
    """Take the next queued job of these endpoints: it is ``running`` from now on.

    On PostgreSQL the row is taken with ``FOR UPDATE SKIP LOCKED``: two replicas never
    take one job; ``runner`` (a replica's id) holds it for ``lease`` seconds, renewed by
    :func:`renew_leases`.
    """
    if shared(db):
        marks = ", ".join("?" for _ in endpoints)
        row = db.execute(
            f"SELECT * FROM jobs WHERE state = 'queued' AND endpoint IN ({marks})"
            " ORDER BY priority = 'batch', seq LIMIT 1 FOR UPDATE SKIP LOCKED",
            endpoints,
        ).fetchone()
        job = None if row is None else Job.from_row(row)
    else:
        job = peek_next(db, endpoints)
    if job is None:
        return None
    now = time.time()
    held = {} if lease is None else {"runner": runner, "lease_until": now + lease}
    return transition(db, job.id, "running", attempts=job.attempts + 1, started_at=now, **held)


def not_running(db: sqlite3.Connection, job_ids: list[str]) -> list[str]:
    """Which of ``job_ids`` are no longer ``running`` (cancelled through another replica)."""
    marks = ", ".join("?" for _ in job_ids)
    rows = db.execute(
        f"SELECT id FROM jobs WHERE id IN ({marks}) AND state != 'running'", tuple(job_ids)
    )
    return [row[0] for row in rows]


def renew_leases(db: sqlite3.Connection, runner: str, until: float) -> int:
    """Extend the leases of the jobs ``runner`` runs; returns how many."""
    cursor = db.execute(
        "UPDATE jobs SET lease_until = ? WHERE runner = ? AND state = 'running'", (until, runner)
    )
    return cursor.rowcount


def transition(
    db: sqlite3.Connection,
    job_id: str,
    state: str,
    *,
    only_from: tuple[str, ...] = (),
    **changes: Any,
) -> Job | None:
    """Move a job to ``state`` (with column ``changes``) and queue its webhook delivery.

    Returns the updated job, or None if it does not exist or is not in ``only_from``.
    """
    job = get_job(db, job_id, lock=True)
    if job is None or (only_from and job.state not in only_from):
        return None
    now = time.time()
    if state in FINISHED:
        changes.setdefault("finished_at", now)
    columns = {"state": state, **changes}
    db.execute(
        f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
        (*columns.values(), job_id),
    )
    updated = get_job(db, job_id)
    assert updated is not None
    if state != job.state:
        _deliver(db, updated, state, job.state, now)
    return updated


def _deliver(
    db: sqlite3.Connection, job: Job, state: str, previous: str | None, now: float
) -> None:
    if not job.webhook_url:
        return
    body = dumps(
        {
            "id": job.id,
            "state": state,
            "previous_state": previous,
            "at": rfc3339(now),
            "job_url": job.url,
        }
    )
    db.execute(
        "INSERT INTO deliveries (job_id, url, body, next_at, policed) VALUES (?, ?, ?, 0, ?)",
        (job.id, job.webhook_url, body, not job.owner_is_admin),  # due now
    )


def recover_interrupted(
    db: sqlite3.Connection, max_attempts: int, expired_before: float | None = None
) -> list[Job]:
    """Jobs left ``running`` by a dead process: back to ``queued``, or ``failed``
    (``interrupted``) once they have started ``max_attempts`` times.

    ``expired_before`` (several replicas): only the jobs whose lease ended before then
    (or that have none); the others' runners are alive.
    """
    recovered = []
    query = "SELECT id, attempts FROM jobs WHERE state = 'running'"
    args: tuple[Any, ...] = ()
    if expired_before is not None:
        query += " AND (lease_until IS NULL OR lease_until < ?)"
        args = (expired_before,)
    if shared(db):
        query += " FOR UPDATE SKIP LOCKED"
    for job_id, attempts in db.execute(query, args).fetchall():
        if attempts >= max_attempts:
            job = transition(db, job_id, "failed", error="interrupted")
        else:
            job = transition(db, job_id, "queued", started_at=None, runner=None)
        if job is not None:
            recovered.append(job)
    return recovered


def artifacts_of(db: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT name, content_type, size, path FROM artifacts WHERE job_id = ? ORDER BY name",
        (job_id,),
    )
    return [dict(row) for row in rows]


def add_artifact(
    db: sqlite3.Connection,
    job_id: str,
    name: str,
    content_type: str,
    size: int,
    path: str,
    content: bytes | None = None,
) -> None:
    """Record an artifact: a file at ``path`` (relative to the data directory), or, on a
    shared database, its ``content`` in the row (``path`` then ``''``)."""
    db.execute(
        "INSERT INTO artifacts (job_id, name, content_type, size, path, content)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, name) DO UPDATE SET"
        " content_type = excluded.content_type, size = excluded.size, path = excluded.path,"
        " content = excluded.content",
        (job_id, name, content_type, size, path, content),
    )


def artifact_content(db: sqlite3.Connection, job_id: str, name: str) -> bytes | None:
    """The bytes of an artifact kept in its row, or None (a file, or no such artifact)."""
    row = db.execute(
        "SELECT content FROM artifacts WHERE job_id = ? AND name = ?", (job_id, name)
    ).fetchone()
    return None if row is None or row[0] is None else bytes(row[0])


def purge_finished(db: sqlite3.Connection, before: float) -> list[str]:
    """Delete jobs finished before ``before`` (with their artifact and delivery rows);
    returns their artifact files' paths, for the caller to delete. On PostgreSQL one
    replica at a time: the others find the janitor's lock taken and do nothing."""
    if (
        shared(db)
        and not db.execute("SELECT pg_try_advisory_xact_lock(?)", (JANITOR_LOCK,)).fetchone()[0]
    ):
        return []
    paths = [
        row[0]
        for row in db.execute(
            "SELECT a.path FROM artifacts a JOIN jobs j ON j.id = a.job_id"
            " WHERE j.finished_at < ? AND a.path != ''",
            (before,),
        )
    ]
    db.execute("DELETE FROM jobs WHERE finished_at < ?", (before,))
    return paths
