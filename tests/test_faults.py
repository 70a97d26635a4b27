"""Nothing a client, a stored row or a disk does stops foreman (issue 16): real processes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx2 as httpx

from foreman.store import _connect

from .processes import foreman, standin, until

#: webhook URLs that each once stopped foreman at their first delivery, and at every start
POISONED_URLS = ("http://x:abc/", "http://x/" + "a" * 65_537, "http://x/\r\nX: y", "http://x/\x00")


def _poison(db_path: Path) -> None:
    """A database holding one finished job per poisoned URL, its delivery due (as a
    foreman that did not check URLs at submission stored them)."""
    db = _connect(str(db_path))
    with db:
        for number, url in enumerate(POISONED_URLS):
            db.execute(
                "INSERT INTO jobs (id, endpoint, request, model, priority, state, created_at,"
                " finished_at, webhook_url) VALUES (?, 'chat', '{}', 'm', 'batch', 'succeeded',"
                " ?, ?, ?)",
                (f"j{number}", time.time(), time.time(), url),
            )
            db.execute(
                "INSERT INTO deliveries (job_id, url, body, next_at) VALUES (?, ?, '{}', 0)",
                (f"j{number}", url),
            )
    db.close()


def test_a_poisoned_delivery_row_is_recorded_and_foreman_stays_up(tmp_path: Path) -> None:
    _poison(tmp_path / "foreman.db")
    with standin() as target, foreman(target, tmp_path) as (url, proc):
        with sqlite3.connect(tmp_path / "foreman.db") as db:
            until(
                lambda: (
                    db.execute("SELECT COUNT(*) FROM deliveries WHERE attempts > 0").fetchone()[0]
                    == len(POISONED_URLS)
                ),
                what="every poisoned delivery tried",
            )
            rows = db.execute("SELECT last_error, next_at FROM deliveries").fetchall()
        assert all(error.startswith("cannot be sent: ") for error, _ in rows), rows
        assert all(next_at == float("inf") for _, next_at in rows), rows  # given up, once
        time.sleep(0.5)
        assert proc.poll() is None
        assert httpx.get(f"{url}/api/tags").status_code == 200
        job = httpx.get(f"{url}/jobs/j0").json()
        assert job["webhook"]["last_error"].startswith("cannot be sent: ")
