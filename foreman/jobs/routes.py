"""The ``/jobs`` API (control plane, Quart): submit, list, show, cancel, artifacts.

* ``POST /jobs`` ``{"endpoint": "chat"|"generate"|"embed", "request": {...}, "priority":
  "batch"|"interactive", "state_webhook_url": "https://...", "metadata": {...}}`` →
  202, ``Location: /jobs/{id}``, the job. The request is checked as the synchronous
  path would check it (its model against the inventory, one re-poll on a miss).
  An array of up to 1,000 such objects is stored all or nothing, in one transaction →
  202, ``{"jobs": [{"id", "state", "url"}, ...]}``; an error names the item (``jobs[3]: ...``).
* ``GET /jobs?state=&priority=&limit=&cursor=``: newest first; ``next_cursor`` pages on.
* ``GET /jobs/{id}``; ``DELETE /jobs/{id}`` cancels (409 once finished).
* ``GET /jobs/{id}/artifacts/{name}``: ``response.json`` (what Ollama answers with
  ``"stream": false``) and, for streamed jobs, ``stream.ndjson`` (the target's bytes).

A job belongs to the key that submitted it (``"owner"``, the user's name): a user lists,
shows, cancels and reads only their own jobs (another's is a 404, as if it did not
exist); an admin sees every job.

Errors use Ollama's shape, ``{"error": "..."}``.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

import httpx2
import trio
from quart import Blueprint, Response, request

from ..control.responses import error_response, json_response, parse_json
from ..dataplane.errors import ModelNotFound
from ..dataplane.jsonwire import dumps, rfc3339
from ..dataplane.names import is_cloud, normalize
from ..users import USER_SCOPE_KEY, User
from . import deliveries, records
from .records import FINISHED, Job
from .service import Jobs

__all__ = ["job_routes"]

ENDPOINTS = ("chat", "generate", "embed")
PRIORITIES = ("batch", "interactive")
MAX_PAGE = 500
MAX_BATCH = 1000  # jobs in one POST /jobs array
MAX_WEBHOOK_URL = 8192  # characters in a state_webhook_url
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def job_routes(jobs: Jobs) -> Blueprint:
    """The ``/jobs`` blueprint for ``jobs``."""
    routes = Blueprint("jobs", __name__)

    async def shape(job: Job) -> dict[str, Any]:
        def read(db: Any) -> tuple[int | None, list[dict[str, Any]], dict[str, Any]]:
            position = records.position_of(db, job) if job.state == "queued" else None
            return (
                position,
                records.artifacts_of(db, job.id),
                deliveries.webhook_summary(db, job.id),
            )

        position, artifacts, webhook = await jobs.store.call(read)
        out: dict[str, Any] = {
            "id": job.id,
            "endpoint": job.endpoint,
            "model": job.model,
            "state": job.state,
            "priority": job.priority,
        }
        if position is not None:
            out["position"] = position
        out.update(
            attempts=job.attempts,
            created_at=rfc3339(job.created_at),
            started_at=rfc3339(job.started_at),
            finished_at=rfc3339(job.finished_at),
            error=job.error,
            metadata=job.metadata,
            owner=job.owner,
            artifacts=[
                {
                    "name": a["name"],
                    "url": f"/jobs/{job.id}/artifacts/{a['name']}",
                    "size": a["size"],
                    "content_type": a["content_type"],
                }
                for a in artifacts
            ],
            webhook=None if job.webhook_url is None else {"url": job.webhook_url, **webhook},
        )
        return out

    async def checked(body: Any) -> dict[str, Any] | tuple[str, int]:
        """A job's fields for :meth:`Jobs.submit`, or (error, status) as the sync path says it.

        Raises:
            TargetError: the target is unreachable and the model unknown (503).
        """
        problem = _problem(body)
        if problem is not None:
            return problem, 422
        ollama_request = body["request"]
        model = ollama_request.get("model")
        if not isinstance(model, str) or not model:
            return "model is required", 400
        if normalize(model) is None:
            return "invalid model name", 400
        if not is_cloud(model):
            try:
                await jobs.inventory.require(model)
            except ModelNotFound as exc:
                if body["endpoint"] == "embed":
                    return f'model "{model}" not found, try pulling it first', 404
                return str(exc), 404
        return {
            "endpoint": body["endpoint"],
            "request": dumps(ollama_request),
            "model": model,
            "priority": body.get("priority", "batch"),
            "metadata": body.get("metadata") or {},
            "webhook_url": body.get("state_webhook_url"),
            "base_url": request.host_url.rstrip("/"),
            "owner": _caller().name,
            "owner_is_admin": _caller().is_admin,
        }

    @routes.post("/jobs")
    async def submit() -> Response:
        try:
            body = parse_json(await request.get_data())
        except ValueError:
            return error_response("the body must be a JSON object (or an array of them)", 400)
        batch = isinstance(body, list)
        if batch and not 1 <= len(body) <= MAX_BATCH:
            return error_response(f"a batch holds 1 to {MAX_BATCH} jobs", 422)
        fields = []
        for index, item in enumerate(body if batch else [body]):
            result = await checked(item)
            if isinstance(result, tuple):
                message, status = result
                return error_response(f"jobs[{index}]: {message}" if batch else message, status)
            fields.append(result)
        stored = await jobs.submit(fields)
        if stored is None:
            return error_response(
                f"too many queued jobs (FOREMAN_MAX_JOBS={jobs.settings.max_jobs})",
                429,
                {"Retry-After": "60"},
            )
        if batch:
            return json_response(
                {"jobs": [{"id": j.id, "state": j.state, "url": f"/jobs/{j.id}"} for j in stored]},
                202,
            )
        return json_response(await shape(stored[0]), 202, {"Location": f"/jobs/{stored[0].id}"})

    @routes.get("/jobs")
    async def listing() -> Response:
        args = request.args
        state, priority = args.get("state"), args.get("priority")
        if state is not None and state not in ("queued", "running", *FINISHED):
            return error_response(f"state: unknown state {state!r}", 422)
        if priority is not None and priority not in PRIORITIES:
            return error_response(f"priority: unknown priority {priority!r}", 422)
        try:
            limit = int(args.get("limit", "50"))
            cursor = int(args["cursor"]) if "cursor" in args else None
        except ValueError:
            return error_response("limit and cursor must be whole numbers", 422)
        if not 1 <= limit <= MAX_PAGE:
            return error_response(f"limit: between 1 and {MAX_PAGE}", 422)
        caller = _caller()
        page = await jobs.store.call(
            lambda db: records.list_jobs(
                db,
                state=state,
                priority=priority,
                limit=limit + 1,
                before=cursor,
                owner=None if caller.is_admin else caller.name,
            )
        )
        more = len(page) > limit
        page = page[:limit]
        return json_response(
            {
                "jobs": [await shape(job) for job in page],
                "next_cursor": str(page[-1].seq) if more else None,
            }
        )

    async def own_job(job_id: str) -> Job | None:
        """The job ``job_id`` if the caller may see it (their own; any for an admin)."""
        job = await jobs.store.call(records.get_job, job_id)
        caller = _caller()
        return job if job is not None and job.visible_to(caller.name, caller.is_admin) else None

    @routes.get("/jobs/<job_id>")
    async def show(job_id: str) -> Response:
        job = await own_job(job_id)
        if job is None:
            return error_response(f"job {job_id!r} not found", 404)
        return json_response(await shape(job))

    @routes.delete("/jobs/<job_id>")
    async def cancel(job_id: str) -> Response:
        job = await own_job(job_id)
        if job is None:
            return error_response(f"job {job_id!r} not found", 404)
        if job.state in FINISHED:
            return error_response(f"job {job_id!r} is already {job.state}", 409)
        job = await jobs.cancel(job_id)
        assert job is not None
        return json_response(await shape(job))

    @routes.get("/jobs/<job_id>/artifacts/<name>")
    async def artifact(job_id: str, name: str) -> Response:
        if await own_job(job_id) is None:
            return error_response(f"job {job_id!r} has no artifact {name!r}", 404)
        found = [
            a for a in await jobs.store.call(records.artifacts_of, job_id) if a["name"] == name
        ]
        if not found:
            return error_response(f"job {job_id!r} has no artifact {name!r}", 404)
        if found[0]["path"]:
            path = os.path.join(jobs.settings.data_path, found[0]["path"])
            data = await trio.Path(path).read_bytes()
        else:  # kept in the row (several replicas)
            data = await jobs.store.call(records.artifact_content, job_id, name) or b""
        return Response(data, content_type=found[0]["content_type"])

    return routes


def _caller() -> User:
    """The request's user (the front authenticates every ``/jobs`` request)."""
    user = request.scope.get(USER_SCOPE_KEY)
    assert user is not None, "the front authenticates every /jobs request"
    return user


def _problem(body: Any) -> str | None:
    """What is wrong with a ``POST /jobs`` body (the field first), or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if body.get("endpoint") not in ENDPOINTS:
        return f"endpoint: one of {', '.join(ENDPOINTS)}"
    if not isinstance(body.get("request"), dict):
        return "request: the Ollama request body, a JSON object"
    if body.get("priority", "batch") not in PRIORITIES:
        return f"priority: one of {', '.join(PRIORITIES)}"
    if not isinstance(body.get("metadata", {}), dict):
        return "metadata: a JSON object"
    url = body.get("state_webhook_url")
    if url is not None:
        problem = webhook_url_problem(url)
        if problem is not None:
            return f"state_webhook_url: {problem}"
    return None


def webhook_url_problem(url: Any) -> str | None:
    """What makes ``url`` unfit for a webhook (the webhook sender could not even try
    it), or None. An http:// or https:// URL of at most :data:`MAX_WEBHOOK_URL`
    characters, printable ASCII, with a host and a valid port."""
    if not isinstance(url, str):
        return "an http:// or https:// URL"
    if len(url) > MAX_WEBHOOK_URL:
        return f"at most {MAX_WEBHOOK_URL} characters"
    if not _PRINTABLE.fullmatch(url):
        return "printable ASCII only (percent-encode the rest)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
        parsed = httpx2.URL(url)
    except (ValueError, httpx2.InvalidURL) as exc:
        return f"not a valid URL ({exc})"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "an http:// or https:// URL"
    return None
