"""Walls between users, small ones: logs, /healthz, model management, identities, keys,
limits, file modes (issue 19). Jobs' owners are in ``tests/test_walls_jobs.py``, the
outbound address policy and the gate per machine in ``tests/test_outbound.py``."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from foreman.standins.ollama import StandIn
from foreman.store import open_store

from .asgi import call
from .conftest import captured_logs, chat_body, open_foreman
from .test_jobs import wait_state
from .test_outbound import ADMIN, user


@pytest.fixture
def text_logs() -> Iterator[io.StringIO]:
    """foreman's text logging, into a string for the test."""
    with captured_logs("text") as stream:
        yield stream


async def test_text_logs_cannot_be_forged_with_control_characters(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock, text_logs: io.StringIO
) -> None:
    forged = "/api/x%0A2026-01-01 00:00:00,000 INFO    foreman.access: 1.2.3.4 admin GET /ok"
    async with open_foreman(nursery, standin) as fm:
        answer = await call(fm.app, "GET", forged.encode())
        assert answer.status == 404
    lines = [line for line in text_logs.getvalue().splitlines() if "foreman.access" in line]
    assert len(lines) == 1, lines  # one request, one line: the \n is escaped
    assert "/api/x\\n2026-01-01" in lines[0]


async def test_healthz_without_a_key_says_only_the_status(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, token="s3cret-token") as fm:
        for path in ("/healthz", "/readyz"):
            bare = await fm.client.get(path)
            assert bare.status_code == 200 and bare.json() == {"status": "ok"}
            wrong = await fm.client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.json() == {"status": "ok"}
            keyed = await fm.client.get(path, headers={"Authorization": "Bearer s3cret-token"})
            assert keyed.json()["status"] == "ok"
            assert keyed.json()["target"] == "http://127.0.0.1:11434"
            assert [b["name"] for b in keyed.json()["backends"]] == ["ollama"]


async def test_model_management_needs_the_admin_role_once_users_exist(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, token="s3cret-token") as fm:
        bob = await user(fm, "bob")
        for method, path, body in MANAGEMENT:
            answer = await fm.client.request(method, path, json=body, headers=bob)
            assert answer.status_code == 403, (path, answer.text)
            assert answer.json() == {
                "error": "managing models needs the admin role (FOREMAN_MODEL_MANAGEMENT=admins)"
            }
        managed = ("/api/pull", "/api/push", "/api/delete", "/api/copy", "/api/create", "/api/b")
        reached = [r for r, n in fm.standin.requests.items() if n]
        assert not [r for r in reached if r.split()[1].lower().startswith(managed)]
        shown = await fm.client.post("/api/show", json={"model": "llama3.2"}, headers=bob)
        assert shown.status_code == 200  # reading is for everyone
        deleted = await fm.client.request(
            "DELETE", "/api/delete", json={"model": "llama3.2"}, headers=ADMIN
        )
        assert deleted.status_code != 403 and fm.standin.requests["DELETE /api/delete"] == 1


async def test_model_management_can_be_opened_to_users(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, token="s3cret-token", model_management="users") as fm:
        bob = await user(fm, "bob")
        deleted = await fm.client.request(
            "DELETE", "/api/delete", json={"model": "llama3.2"}, headers=bob
        )
        assert deleted.status_code != 403 and fm.standin.requests["DELETE /api/delete"] == 1


def file_modes(data: Path) -> dict[str, int]:
    """Every file's and directory's permission bits under ``data``, by relative path."""
    return {
        str(path.relative_to(data)): stat.S_IMODE(path.stat().st_mode)
        for path in [data, *data.rglob("*")]
    }


MANAGEMENT = [
    ("POST", "/api/pull", {"model": "qwen3:0.6b"}),
    ("POST", "/api/push", {"model": "llama3.2"}),
    ("DELETE", "/api/delete", {"model": "llama3.2"}),
    ("DELETE", "/API/Delete/", {"model": "llama3.2"}),
    ("POST", "/api/copy", {"source": "llama3.2", "destination": "mine"}),
    ("POST", "/api/create", {"model": "mine", "from": "llama3.2"}),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ("POST", "/api/blobs/sha256:" + "0" * 64, None),
]


async def test_the_data_directory_database_and_artifacts_are_private_whatever_the_umask(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    old = os.umask(0o022)  # the usual umask: files 0644, directories 0755
    try:
        async with open_foreman(nursery, standin) as fm:
            body = {"endpoint": "chat", "request": chat_body(stream=True)}
            job = (await fm.client.post("/jobs", json=body)).json()
            assert (await wait_state(fm, job["id"], "succeeded"))["state"] == "succeeded"
            modes = file_modes(Path(fm.gw.settings.data_path))
    finally:
        os.umask(old)
    assert modes["."] == 0o700
    for name in ("foreman.db", "foreman.db-wal", "foreman.db-shm"):
        assert modes[name] == 0o600, (name, oct(modes[name]))
    artifacts = [name for name in modes if name.startswith("artifacts/") and "." in name]
    assert len(artifacts) == 2  # response.json and stream.ndjson
    assert all(modes[name] == 0o600 for name in artifacts), modes
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


async def test_user_names_ignore_case_and_admin_and_anonymous_are_reserved(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, token="s3cret-token") as fm:
        await user(fm, "bob")
        for name, error in [
            ("BOB", "name: a user 'BOB' exists already"),
            ("admin", "name: 'admin' is reserved"),
            ("Admin", "name: 'Admin' is reserved"),
            ("anonymous", "name: 'anonymous' is reserved"),
        ]:
            refused = await fm.client.post("/admin/api/users", json={"name": name}, headers=ADMIN)
            assert (refused.status_code, refused.json()) == (422, {"error": error})


async def test_backend_names_are_per_owner_and_errors_name_no_private_backend(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, token="s3cret-token") as fm:
        keys = {name: await user(fm, name) for name in ("alice", "bob")}
        body = {"type": "ollama", "endpoint": "http://192.0.2.1:11434", "is_active": False}
        mine = {**body, "name": "alice-ollama"}
        assert (
            await fm.client.post("/admin/api/backends", json=mine, headers=keys["alice"])
        ).status_code == 201
        # bob may use the same name: he never learns that alice has one
        same = await fm.client.post("/admin/api/backends", json=mine, headers=keys["bob"])
        assert same.status_code == 201, same.text
        renamed = await fm.client.post(
            "/admin/api/backends", json={**body, "name": "other"}, headers=keys["bob"]
        )
        clash = await fm.client.patch(
            f"/admin/api/backends/{renamed.json()['id']}",
            json={"name": "alice-ollama"},
            headers=keys["bob"],
        )
        assert clash.status_code == 422  # his own one has that name
        # a shared name is everyone's: taken for users, and a shared one must be unique
        shared = await fm.client.post(
            "/admin/api/backends", json={**body, "name": "ollama"}, headers=keys["bob"]
        )
        assert (shared.status_code, shared.json()["field"]) == (422, "name")
        twice = await fm.client.post(
            "/admin/api/backends", json={**body, "name": "ollama"}, headers=ADMIN
        )
        assert twice.status_code == 422


async def test_a_stored_key_never_follows_a_new_endpoint(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin) as fm:
        body = {"name": "proxied", "type": "ollama", "endpoint": "http://192.0.2.1:11434"}
        added = await fm.client.post(
            "/admin/api/backends", json={**body, "api_key": "proxy-token-0001", "is_active": False}
        )
        path = f"/admin/api/backends/{added.json()['id']}"
        same_origin = await fm.client.patch(path, json={"endpoint": "http://192.0.2.1:11434/x"})
        assert same_origin.json()["api_key"] == "…0001"  # the same server: the key stays
        for endpoint in ("https://192.0.2.1:11434", "http://192.0.2.2:11434", "http://192.0.2.2:1"):
            moved = await fm.client.patch(path, json={"endpoint": endpoint})
            assert moved.json()["api_key"] is None, endpoint
            await fm.client.patch(path, json={"api_key": "proxy-token-0001"})
        given = await fm.client.patch(
            path, json={"endpoint": "http://192.0.2.3:11434", "api_key": "proxy-token-0002"}
        )
        assert given.json()["api_key"] == "…0002"
        claude = {"name": "claude", "type": "anthropic", "api_key": "sk-ant-key-0003"}
        added = await fm.client.post("/admin/api/backends", json={**claude, "is_active": False})
        moved = await fm.client.patch(
            f"/admin/api/backends/{added.json()['id']}", json={"endpoint": "https://192.0.2.9"}
        )
        assert (moved.status_code, moved.json()["field"]) == (422, "api_key")


async def test_limits_answer_422_naming_the_field(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(
        nursery,
        standin,
        token="s3cret-token",
        max_backends_per_user=2,
        max_aliases_per_user=3,
        max_name_length=10,
        max_endpoint_length=40,
        max_key_length=20,
        max_alias_length=12,
    ) as fm:
        bob = await user(fm, "bob")
        body = {"type": "ollama", "endpoint": "http://192.0.2.1:11434", "is_active": False}

        async def refused(method: str, path: str, fields: dict[str, Any], field: str) -> None:
            answer = await fm.client.request(method, path, json=fields, headers=bob)
            assert answer.status_code == 422, answer.text
            assert answer.json()["field"] == field, answer.text

        backends = "/admin/api/backends"
        await refused("POST", backends, {**body, "name": "x" * 11}, "name")
        await refused(
            "POST", backends, {**body, "name": "a", "endpoint": "http://h/" + "p" * 40}, "endpoint"
        )
        await refused("POST", backends, {**body, "name": "a", "api_key": "k" * 21}, "api_key")
        for name in ("one", "two"):
            added = await fm.client.post(backends, json={**body, "name": name}, headers=bob)
            assert added.status_code == 201
        await refused("POST", backends, {**body, "name": "three"}, "backends")
        shared = await fm.client.post(backends, json={**body, "name": "three"}, headers=ADMIN)
        assert shared.status_code == 201  # shared backends are the admin's to count
        await refused("PATCH", f"{backends}/{added.json()['id']}", {"name": "y" * 11}, "name")

        preferences = "/admin/api/preferences"
        four = {f"a{i}": "llama3.2" for i in range(4)}
        await refused("PUT", preferences, {"aliases": four}, "aliases")
        await refused("PUT", preferences, {"aliases": {"a" * 13: "llama3.2"}}, "aliases")
        await refused("PUT", preferences, {"aliases": {"a": "m" * 13}}, "aliases")
        kept = await fm.client.put(preferences, json={"aliases": {"a": "llama3.2"}}, headers=bob)
        assert kept.status_code == 200


async def test_migrations_keep_backends_models_preferences_and_jobs(tmp_path: Path) -> None:
    from importlib import resources

    path = str(tmp_path / "foreman.db")
    old = sqlite3.connect(path)
    scripts = resources.files("foreman.store").joinpath("migrations")
    for name in ("0001_jobs.sql", "0002_lane_index.sql", "0003_users.sql", "0004_backends.sql"):
        old.executescript(scripts.joinpath(name).read_text())
    old.executescript(
        "INSERT INTO backends (id, name, type, endpoint, owner, created_at, updated_at)"
        " VALUES (7, 'home', 'ollama', 'http://192.0.2.1:11434', 'bob', 1, 1);"
        "INSERT INTO backend_models VALUES (7, 'llama3.2:latest', 1, 1, 1);"
        "INSERT INTO preferences VALUES ('bob', 7, NULL, '{}');"
        "INSERT INTO jobs (id, endpoint, request, priority, state, created_at)"
        " VALUES ('j', 'chat', x'7b7d', 'batch', 'queued', 1);"
        "PRAGMA user_version = 4;"
    )
    old.close()
    async with open_store(path) as store:

        def read(db: sqlite3.Connection) -> Any:
            return (
                [tuple(row) for row in db.execute("SELECT id, name, owner FROM backends")],
                db.execute("SELECT COUNT(*) FROM backend_models").fetchone()[0],
                db.execute("SELECT default_backend_id FROM preferences").fetchone()[0],
                db.execute("SELECT owner, owner_is_admin FROM jobs").fetchone()[:],
                db.execute("PRAGMA foreign_key_check").fetchall(),
            )

        assert await store.call(read) == ([(7, "home", "bob")], 1, 7, (None, 1), [])
        await store.call(lambda db: db.execute("DELETE FROM backends WHERE id = 7"))
        after = await store.call(read)
        assert after[1] == 0 and after[2] is None  # foreign keys work on the rebuilt table
