"""The job queue across replicas (``FOREMAN_DATABASE_URL``): leases and take-over.

A replica that takes a job holds it for :data:`LEASE` seconds and renews the leases of
the jobs it runs every :data:`RENEW` seconds while it lives. Every replica sweeps for
running jobs whose lease ran out — their replica died — and puts them back in the
queue (or fails them, ``interrupted``, past ``FOREMAN_JOB_MAX_ATTEMPTS``), as one
replica does after a restart. Queued jobs are taken with ``FOR UPDATE SKIP LOCKED``
(:func:`foreman.jobs.records.claim_next`): exactly one replica runs each.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

import trio

from . import records

__all__ = ["LEASE", "LOOK_AGAIN", "RENEW", "keep_leases"]

LOGGER = logging.getLogger("foreman.jobs")

LEASE = 10.0  # seconds a replica holds a job it runs without renewing
RENEW = 3.0  # seconds between renewals (and sweeps for expired leases)
#: Seconds a waiting worker or webhook sender looks again on a shared database: another
#: replica's submissions and retries do not wake this one.
LOOK_AGAIN = 1.0


async def keep_leases(jobs: Any, replica: str, max_attempts: int) -> None:
    """Renew this replica's leases and take over expired ones, forever; stop the jobs it
    runs that another replica cancelled (``DELETE /jobs/{id}`` reached it).

    ``jobs`` is the :class:`~foreman.jobs.service.Jobs` of this replica. A store that
    fails is retried at the next round: the leases then run out, which is what a
    replica cut off from the database should let happen.
    """
    store = jobs.store
    while True:
        try:
            await store.call(records.renew_leases, replica, time.time() + LEASE)
            recovered = await store.call(records.recover_interrupted, max_attempts, time.time())
            mine = list(jobs.running)
            gone = await store.call(records.not_running, mine) if mine else []
        except sqlite3.Error as exc:
            LOGGER.warning("jobs: cannot renew leases (%s)", exc)
            recovered, gone = [], []
        for job_id in gone:
            run = jobs.running.get(job_id)
            if run is not None:
                LOGGER.info("job %s was cancelled through another replica", job_id)
                run[0].cancel()
        for job in recovered:
            LOGGER.warning("job %s: its replica stopped; now %s", job.id, job.state)
        if recovered:
            await jobs._touched()
        await trio.sleep(RENEW)
