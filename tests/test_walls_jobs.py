"""Every user in their own room: jobs have owners, and no ``/jobs`` or ``/admin/api/*``
route lets one user reach another's things (issue 19)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from foreman.standins.ollama import StandIn

from .conftest import Foreman, chat_body, open_foreman
from .test_admin_pages import browser, sign_in
from .test_backends import SECOND, second_standin

ADMIN = {"authorization": "Bearer s3cret-token"}


@dataclass
class Person:
    """A user and the things they own."""

    name: str
    headers: dict[str, str]
    job: str = ""  # a finished job, with artifacts
    queued: str = ""  # a job that never runs (its model's server is frozen)
    backend: int = 0


@asynccontextmanager
async def two_users(
    nursery: trio.Nursery, standin: StandIn
) -> AsyncIterator[tuple[Foreman, Person, Person]]:
    """foreman with alice and bob, each with a finished job, a queued job and a backend."""
    transports = {SECOND: second_standin().transport(nursery)}
    async with open_foreman(
        nursery, standin, token="s3cret-token", backend_transports=transports
    ) as fm:
        people = []
        for name in ("alice", "bob"):
            made = await fm.client.post("/admin/api/users", json={"name": name}, headers=ADMIN)
            person = Person(name, {"authorization": f"Bearer {made.json()['key']}"})
            body = {"endpoint": "chat", "request": chat_body(), "metadata": {"who": name}}
            job = await fm.client.post("/jobs", json=body, headers=person.headers)
            assert job.status_code == 202 and job.json()["owner"] == name
            person.job = job.json()["id"]
            await finished(fm, person.job)
            backend = {"name": "mine", "type": "ollama", "endpoint": SECOND}
            added = await fm.client.post(
                "/admin/api/backends", json=backend, headers=person.headers
            )
            assert added.status_code == 201, added.text
            person.backend = added.json()["id"]
            people.append(person)
        fm.standin.freeze()  # the chat slot's next job never finishes: the rest stay queued
        for person in people:
            body = {"endpoint": "chat", "request": chat_body()}
            person.queued = (
                await fm.client.post("/jobs", json=body, headers=person.headers)
            ).json()["id"]
        try:
            yield fm, people[0], people[1]
        finally:
            fm.standin.thaw()


async def finished(fm: Foreman, job_id: str) -> None:
    with trio.fail_after(600):
        while True:
            job = await fm.client.get(f"/jobs/{job_id}", headers=ADMIN)
            if job.json()["state"] == "succeeded":
                return
            await trio.sleep(0.05)


#: (method, rule, path of the other's object, body, status for another user).
def walk(other: Person, me: Person) -> list[tuple[str, str, str, Any, int]]:
    job, backend = other.job, other.backend
    return [
        ("GET", "/jobs/<job_id>", f"/jobs/{job}", None, 404),
        (
            "GET",
            "/jobs/<job_id>/artifacts/<name>",
            f"/jobs/{job}/artifacts/response.json",
            None,
            404,
        ),
        ("DELETE", "/jobs/<job_id>", f"/jobs/{other.queued}", None, 404),
        ("GET", "/admin/api/users", "/admin/api/users", None, 403),
        ("POST", "/admin/api/users", "/admin/api/users", {"name": "carol"}, 403),
        ("DELETE", "/admin/api/users/<name>", f"/admin/api/users/{other.name}", None, 403),
        (
            "GET",
            "/admin/api/backends/<int:backend_id>/models",
            f"/admin/api/backends/{backend}/models",
            None,
            404,
        ),
        (
            "POST",
            "/admin/api/backends/<int:backend_id>/test",
            f"/admin/api/backends/{backend}/test",
            None,
            404,
        ),
        (
            "POST",
            "/admin/api/backends/<int:backend_id>/select-model",
            f"/admin/api/backends/{backend}/select-model",
            {"model": "llama3.2:latest"},
            404,
        ),
        (
            "PATCH",
            "/admin/api/backends/<int:backend_id>",
            f"/admin/api/backends/{backend}",
            {"is_active": False},
            404,
        ),
        (
            "DELETE",
            "/admin/api/backends/<int:backend_id>",
            f"/admin/api/backends/{backend}",
            None,
            404,
        ),
        # the routes without another's object in the path: the other's things never show
        (
            "POST",
            "/admin/api/backends",
            "/admin/api/backends",
            {"name": "x", "type": "ollama", "endpoint": SECOND, "owner": other.name},
            422,
        ),
        (
            "PUT",
            "/admin/api/preferences",
            "/admin/api/preferences",
            {"default_backend_id": backend},
            422,
        ),
    ]


#: The routes whose answer is the caller's own list: checked for what they leave out.
LISTINGS = {
    ("GET", "/jobs"),
    ("GET", "/admin/api/backends"),
    ("GET", "/admin/api/backends/status"),
    ("GET", "/admin/api/preferences"),
}
#: Submitting: the job's owner is always the caller (``two_users`` checks it).
SUBMIT = {("POST", "/jobs")}


def routes_of(fm: Foreman) -> set[tuple[str, str]]:
    """Every (method, rule) the control plane serves under /jobs and /admin/api/."""
    control = fm.app.control.app
    return {
        (method, rule.rule)
        for rule in control.url_map.iter_rules()
        if rule.rule.startswith(("/jobs", "/admin/api/"))
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }


async def listed(fm: Foreman, person: Person) -> str:
    """Everything the listings show ``person``, as one text."""
    texts = []
    for _, path in sorted(LISTINGS):
        answer = await fm.client.get(path, headers=person.headers)
        assert answer.status_code == 200, (path, answer.text)
        texts.append(answer.text)
    return "\n".join(texts)


async def test_no_route_lets_a_user_reach_anothers_jobs_or_backends(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with two_users(nursery, standin) as (fm, alice, bob):
        walked = {(m, r) for m, r, *_ in walk(bob, alice)}
        assert walked | LISTINGS | SUBMIT == routes_of(fm)  # a new route must join this test

        for me, other in ((alice, bob), (bob, alice)):
            for method, rule, path, body, status in walk(other, me):
                answer = await fm.client.request(method, path, json=body, headers=me.headers)
                assert answer.status_code == status, (me.name, method, rule, answer.text)
                assert other.name not in answer.text or rule == "/admin/api/backends"
            seen = await listed(fm, me)
            assert me.job in seen and str(me.queued) in seen
            assert other.job not in seen and other.queued not in seen
            assert f'"owner":"{other.name}"' not in seen.replace(" ", "")
        # nothing was changed by the refused calls
        for person in (alice, bob):
            job = await fm.client.get(f"/jobs/{person.queued}", headers=person.headers)
            assert job.json()["state"] in ("queued", "running")  # not cancelled
            backend = await fm.client.get("/admin/api/backends", headers=person.headers)
            assert person.backend in [b["id"] for b in backend.json()["backends"]]

        # the admin sees everyone's, with the owner shown, and may do everything
        everything = (await fm.client.get("/jobs", headers=ADMIN)).json()["jobs"]
        owners = {job["id"]: job["owner"] for job in everything}
        assert owners[alice.job] == "alice" and owners[bob.job] == "bob"
        assert owners[alice.queued] == "alice" and owners[bob.queued] == "bob"
        for method, rule, path, body, _ in walk(bob, alice):
            if rule == "/admin/api/backends":
                body = {**body, "name": "for-bob"}
            if rule == "/admin/api/preferences":
                continue  # the admin's own preferences: bob's backend is not the admin's to use
            answer = await fm.client.request(method, path, json=body, headers=ADMIN)
            assert answer.status_code < 400, (method, rule, answer.text)


async def test_the_dashboard_shows_a_user_their_own_jobs_only(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with two_users(nursery, standin) as (fm, alice, bob):
        seen = {}
        for person in (alice, bob):
            async with browser(fm) as client:
                await sign_in(client, person.headers["authorization"].removeprefix("Bearer "))
                seen[person.name] = (await client.get("/admin/live")).text
        assert alice.job in seen["alice"] and bob.job not in seen["alice"]
        assert bob.job in seen["bob"] and alice.job not in seen["bob"]


def test_the_cli_table_shows_each_jobs_owner() -> None:
    from rich.console import Console

    from foreman.jobs.cli import _table

    job = {"id": "j1", "owner": "alice", "endpoint": "chat", "state": "queued", "priority": "batch"}
    console = Console(width=200, record=True)
    console.print(_table([{**job, "attempts": 0, "created_at": "2026-01-01T00:00:00Z"}]))
    lines = console.export_text().splitlines()
    header, row = lines[1], lines[3]
    assert "owner" in header and "alice" in row
