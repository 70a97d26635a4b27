"""``foreman jobs list|show|cancel|submit``: the ``/jobs`` API from a terminal.

Every command talks to a running foreman over HTTP (``--url``, ``FOREMAN_URL``, else
the address of ``FOREMAN_LISTEN``; ``--token``, ``FOREMAN_TOKEN``). ``--json`` prints
the API's own JSON instead of a table. Exit status: 0 on success, 1 when foreman
answers an error or cannot be reached (one line on stderr, foreman's ``{"error": ...}``
text when it has one).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import click
import httpx2
from rich.table import Column, Table

from ..terminal import fail, print_table

__all__ = ["jobs"]

FINISHED = ("succeeded", "failed", "cancelled")
STATE_STYLES = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "dim",
}


class _Api:
    """A small synchronous client of one foreman's ``/jobs`` API."""

    def __init__(self, url: str, token: str | None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.client = httpx2.Client(base_url=self.url, headers=headers, timeout=30.0)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        """Send one request; exits with one line on a connection failure or an error status."""
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx2.HTTPError as exc:
            fail(f"cannot reach foreman at {self.url}: {exc}")
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text.strip() or response.reason_phrase
            fail(f"{message} (HTTP {response.status_code})")
        return response


def _json_argument(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=what) from None


def _duration(job: dict[str, Any]) -> str:
    if not job.get("started_at"):
        return ""
    start = datetime.fromisoformat(job["started_at"])
    end = datetime.fromisoformat(job["finished_at"]) if job.get("finished_at") else None
    if end is None:
        return "…"
    return f"{(end - start).total_seconds():.1f} s"


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(
        Column("id", no_wrap=True),
        "endpoint",
        "model",
        Column("state", no_wrap=True),
        "priority",
        "attempts",
        "created",
        "took",
    )
    for job in jobs:
        state = job["state"]
        if job.get("position") is not None:
            state += f" (#{job['position']})"
        table.add_row(
            job["id"],
            job["endpoint"],
            job.get("model") or "",
            f"[{STATE_STYLES.get(job['state'], '')}]{state}",
            job["priority"],
            str(job["attempts"]),
            job["created_at"],
            _duration(job),
        )
    return table


def default_url(env: Mapping[str, str] = os.environ) -> str:
    """The URL of the foreman this shell would start: ``FOREMAN_LISTEN``'s address (a
    wildcard host as loopback), ``https`` when ``FOREMAN_TLS_CERT`` is set."""
    host, _, port = (env.get("FOREMAN_LISTEN") or "127.0.0.1:8080").rpartition(":")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host.strip("[]"), host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'https' if env.get('FOREMAN_TLS_CERT') else 'http'}://{host}:{port}"


@click.group()
@click.option(
    "--url",
    envvar="FOREMAN_URL",
    show_envvar=True,
    default=default_url,
    show_default="FOREMAN_LISTEN's address, else http://127.0.0.1:8080",
    help="The running foreman to talk to.",
)
@click.option(
    "--token",
    envvar="FOREMAN_TOKEN",
    show_envvar=True,
    help="Its bearer token, if it has one.",
)
@click.pass_context
def jobs(ctx: click.Context, url: str, token: str | None) -> None:
    """The job queue of a running foreman: list, show, cancel and submit jobs."""
    ctx.obj = _Api(url, token)


@jobs.command("list")
@click.option(
    "--state", type=click.Choice(["queued", "running", *FINISHED]), help="Only jobs in this state."
)
@click.option("--priority", type=click.Choice(["batch", "interactive"]), help="Only this lane.")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_obj
def list_jobs(
    api: _Api, state: str | None, priority: str | None, limit: int, as_json: bool
) -> None:
    """The newest jobs first."""
    params = {"limit": limit, "state": state, "priority": priority}
    page = api.call("GET", "/jobs", params={k: v for k, v in params.items() if v}).json()
    if as_json:
        _print_json(page)
    elif not page["jobs"]:
        click.echo("no jobs")
    else:
        print_table(_table(page["jobs"]))


@jobs.command()
@click.argument("job_id")
@click.pass_obj
def show(api: _Api, job_id: str) -> None:
    """One job, as GET /jobs/{id} answers it (JSON)."""
    _print_json(api.call("GET", f"/jobs/{job_id}").json())


@jobs.command()
@click.argument("job_id")
@click.pass_obj
def cancel(api: _Api, job_id: str) -> None:
    """Cancel a queued or running job (a running one's request to the target is aborted)."""
    job = api.call("DELETE", f"/jobs/{job_id}").json()
    click.echo(f"{job['id']} {job['state']}")


@jobs.command()
@click.argument("endpoint", type=click.Choice(["chat", "generate", "embed"]))
@click.argument("request", default="-", metavar="REQUEST_JSON")
@click.option(
    "--priority",
    type=click.Choice(["batch", "interactive"]),
    default="batch",
    show_default=True,
    help="The lane: interactive jobs run before batch ones.",
)
@click.option("--webhook", metavar="URL", help="POST each state change of the job here.")
@click.option("--metadata", metavar="JSON", help="A JSON object kept with the job.")
@click.option("--wait", is_flag=True, help="Wait until the job ends; print its response.json.")
@click.pass_obj
def submit(
    api: _Api,
    endpoint: str,
    request: str,
    priority: str,
    webhook: str | None,
    metadata: str | None,
    wait: bool,
) -> None:
    """Queue ENDPOINT's REQUEST_JSON (an Ollama request body; - or nothing reads stdin).

    Prints the job's id; with --wait, prints what Ollama would have answered with
    "stream": false once the job has succeeded (exit 1 if it failed or was cancelled).

    \b
    Example:
      foreman jobs submit chat '{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'
    """
    text = sys.stdin.read() if request == "-" else request
    body: dict[str, Any] = {
        "endpoint": endpoint,
        "request": _json_argument(text, "REQUEST_JSON"),
        "priority": priority,
    }
    if webhook:
        body["state_webhook_url"] = webhook
    if metadata:
        body["metadata"] = _json_argument(metadata, "--metadata")
    job = api.call("POST", "/jobs", json=body).json()
    if not wait:
        click.echo(job["id"])
        return
    click.echo(job["id"], err=True)
    while job["state"] not in FINISHED:
        time.sleep(0.5)
        job = api.call("GET", f"/jobs/{job['id']}").json()
    if job["state"] != "succeeded":
        fail(f"job {job['id']} {job['state']}: {job.get('error') or ''}".rstrip(": "))
    response = api.call("GET", f"/jobs/{job['id']}/artifacts/response.json")
    click.echo(response.text)
