"""One job at the target, and what it leaves behind.

:func:`execute` sends a claimed job's request to the target and reads the answer whole
(a stream assembled into what ``"stream": false`` answers, :mod:`foreman.jobs.assemble`);
:class:`Artifacts` keeps the answers: files in the data directory, or rows of a shared
database (several replicas serve them).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import trio

from ..backends.ollama.inventory import Inventory
from ..backends.ollama.target import Target
from ..dataplane.errors import TargetError, TargetStatus
from ..settings import Settings
from ..store import Store
from ..store.private import write_private
from . import records
from .assemble import StreamError, assemble
from .records import Job

__all__ = ["Artifacts", "execute"]

LOGGER = logging.getLogger("foreman.jobs")


class Artifacts:
    """A job's artifacts (``stream.ndjson``, ``response.json``).

    Args:
        store: the open store (it lists them, and holds them when ``shared``).
        data_path: foreman's data directory; files go to ``artifacts/<job id>/<name>``.
        shared: a database other replicas use: the bytes go in the row, not in a file.
    """

    def __init__(self, store: Store, data_path: str, *, shared: bool) -> None:
        self.store, self.data_path, self.shared = store, data_path, shared

    async def save(self, job: Job, name: str, content_type: str, data: bytes) -> None:
        """Keep ``data`` as the job's artifact ``name`` (written 0600, whatever the umask).

        Raises:
            OSError: the file could not be written; StoreUnavailable: nor the row.
        """
        if self.shared:
            await self.store.call(
                records.add_artifact, job.id, name, content_type, len(data), "", data
            )
            return
        relative = os.path.join("artifacts", job.id, name)
        path = os.path.join(self.data_path, relative)
        await trio.to_thread.run_sync(write_private, path, data)
        await self.store.call(records.add_artifact, job.id, name, content_type, len(data), relative)

    def remove(self, paths: list[str]) -> None:
        """Delete these files (paths relative to the data directory) and their job's
        directory once empty; blocking (run it in a thread). Missing ones are skipped."""
        for relative in paths:
            path = os.path.join(self.data_path, relative)
            try:
                os.remove(path)
                os.rmdir(os.path.dirname(path))
            except OSError:
                pass  # already gone, or the directory still has another artifact


async def execute(
    job: Job, target: Target, inventory: Inventory, settings: Settings, artifacts: Artifacts
) -> tuple[str, dict[str, Any]]:
    """Send the job's request to the target and keep its answer.

    Returns ``(next state, column changes)``: ``succeeded``; ``failed`` with ``error``
    (the target's status and message, or a stream that ended in an error line);
    ``queued`` when the target went away or answered 503 (Ollama's own queue is full),
    to run again without spending an attempt.

    Raises:
        OSError, StoreUnavailable: an artifact could not be kept.
    """
    body = json.loads(job.request)
    streams = job.endpoint != "embed" and body.get("stream") is not False
    request = target.request(
        "POST",
        f"/api/{job.endpoint}".encode(),
        headers=[(b"content-type", b"application/json")],
        content=job.request,
    )
    timeout = settings.idle_timeout if streams else settings.response_timeout
    try:
        response = await target.send(request, header_timeout=timeout)
        try:
            content = b"".join([chunk async for chunk in target.chunks(response)])
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()
    except TargetStatus as exc:
        return "failed", {"error": str(exc)}
    except TargetError as exc:
        inventory.kick()
        LOGGER.warning("job %s: the target went away (%s); it goes back to the queue", job.id, exc)
        return "queued", {}
    if response.status_code == 503:  # Ollama's own queue is full: later
        return "queued", {}
    if response.status_code != 200:
        return "failed", {"error": _error_text(content, response.status_code)}
    if streams:
        await artifacts.save(job, "stream.ndjson", "application/x-ndjson", content)
        try:
            content = assemble(job.endpoint, content)
        except StreamError as exc:
            return "failed", {"error": str(exc)}
    await artifacts.save(job, "response.json", "application/json; charset=utf-8", content)
    return "succeeded", {}


def _error_text(body: bytes, status: int) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return f"the target answered {status}"
