"""The dashboard, ``GET /admin/``, and its live part, ``GET /admin/live``: each backend's
state, the models resident on each Ollama machine, chats in flight and waiting, the job
queue per lane and the recent jobs."""

from __future__ import annotations

import time
from typing import Any

from ...jobs import records as job_records
from ...users.sessions import Session
from ._common import page, pages, render, services

RECENT_JOBS = 10


def _duration(job: job_records.Job, now: float) -> str:
    if job.started_at is None:
        return ""
    seconds = (job.finished_at or now) - job.started_at
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


async def _context(session: Session) -> dict[str, Any]:
    found = services()
    gw, manager, backends = found.gw, found.manager, found.backends
    now = time.time()
    rows = []
    for record in manager.seen(session.user):
        running = backends.running.get(record.id)
        gate = getattr(running, "gate", None)
        residency = getattr(running, "residency", None)
        rows.append(
            {
                "record": record,
                "status": manager.status(record.id),
                "selected": backends.selected.get(record.id),
                "resident": None if residency is None else residency.resident,
                "gate": None if gate is None else gate.statistics(),
            }
        )
    jobs = None
    if gw.jobs is not None:
        recent = await gw.jobs.store.call(
            lambda db: job_records.list_jobs(
                db, state=None, priority=None, limit=RECENT_JOBS, before=None
            )
        )
        jobs = {
            "depths": dict(gw.jobs.depths),
            "running": gw.jobs.chat_job,
            "recent": [(job, _duration(job, now)) for job in recent],
        }
    return {"rows": rows, "jobs": jobs, "embeds": gw.embeds_in_flight, "now": now}


@pages.get("/admin/")
@page()
async def dashboard(session: Session) -> Any:
    return await render(session, "dashboard.html", **await _context(session))


@pages.get("/admin/live")
@page()
async def dashboard_live(session: Session) -> Any:
    return await render(session, "_dashboard.html", **await _context(session))
