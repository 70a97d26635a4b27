"""Users and their API keys: /admin/api/users, `foreman users`, and what a key opens."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import trio

from foreman.standins.ollama import StandIn
from foreman.users import REFRESH, revoke_user

from .conftest import Foreman, open_foreman, settings


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_the_first_user_closes_an_open_foreman_and_keys_open_it_again(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    assert (await fm.client.get("/api/tags")).status_code == 200  # open, as v1 without a token
    created = await fm.client.post("/admin/api/users", json={"name": "ada", "role": "admin"})
    assert created.status_code == 201
    ada = created.json()
    assert ada["key"].startswith("fm_") and len(ada["key"]) == 46
    assert ada["key_prefix"] == ada["key"][:7] + "…" and ada["revoked_at"] is None

    refused = await fm.client.get("/api/tags")
    assert refused.status_code == 401 and refused.json() == {"error": "unauthorized"}
    assert (await fm.client.get("/healthz")).status_code == 200  # never needs a key
    assert (await fm.client.get("/api/tags", headers=bearer(ada["key"]))).status_code == 200
    assert (await fm.client.get("/api/tags", headers=bearer(ada["key"] + "x"))).status_code == 401

    bob = (
        await fm.client.post("/admin/api/users", json={"name": "bob"}, headers=bearer(ada["key"]))
    ).json()
    assert bob["role"] == "user"
    chat = await fm.client.post(
        "/api/chat",
        json={"model": "llama3.2", "messages": [], "stream": False},
        headers=bearer(bob["key"]),
    )
    assert chat.status_code == 200
    forbidden = await fm.client.get("/admin/api/users", headers=bearer(bob["key"]))
    assert forbidden.status_code == 403 and forbidden.json() == {"error": "admins only"}

    listed = (await fm.client.get("/admin/api/users", headers=bearer(ada["key"]))).json()
    assert [(u["name"], u["role"]) for u in listed["users"]] == [("ada", "admin"), ("bob", "user")]
    assert all(
        set(u) == {"name", "role", "key_prefix", "created_at", "revoked_at"}
        for u in listed["users"]
    )

    revoked = await fm.client.delete("/admin/api/users/bob", headers=bearer(ada["key"]))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert (await fm.client.get("/api/tags", headers=bearer(bob["key"]))).status_code == 401
    missing = await fm.client.delete("/admin/api/users/carol", headers=bearer(ada["key"]))
    assert missing.status_code == 404 and missing.json() == {"error": "user 'carol' not found"}

    # only the keys' hashes are stored
    for name in ("foreman.db", "foreman.db-wal"):
        path = trio.Path(fm.gw.settings.data_path, name)
        stored = await path.read_bytes() if await path.exists() else b""
        assert ada["key"].encode() not in stored and bob["key"].encode() not in stored


async def test_bad_users_are_refused_naming_the_field(
    fm: Foreman, autojump_clock: trio.abc.Clock
) -> None:
    key = (await fm.client.post("/admin/api/users", json={"name": "ada", "role": "admin"})).json()
    for body, error in [
        ({"name": "ada"}, "name: a user 'ada' exists already"),
        ({"name": "-x"}, "name: 1 to 64 of A-Z a-z 0-9 . _ @ -, not starting with . _ @ -"),
        ({"name": 7}, "name: 1 to 64 of A-Z a-z 0-9 . _ @ -, not starting with . _ @ -"),
        ({"name": "zed", "role": "root"}, "role: one of admin, user"),
    ]:
        response = await fm.client.post("/admin/api/users", json=body, headers=bearer(key["key"]))
        assert (response.status_code, response.json()) == (422, {"error": error})
    wrong = await fm.client.post("/admin/api/users", content=b"[", headers=bearer(key["key"]))
    assert wrong.status_code == 400


async def test_foreman_token_stays_the_admin_key(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    async with open_foreman(nursery, standin, token="s3cret") as fm:
        assert (await fm.client.get("/admin/api/users")).status_code == 401
        made = await fm.client.post(
            "/admin/api/users", json={"name": "cat"}, headers=bearer("s3cret")
        )
        key = made.json()["key"]
        assert (await fm.client.get("/api/tags", headers=bearer(key))).status_code == 200
        assert (await fm.client.get("/api/tags", headers=bearer("s3cret"))).status_code == 200


async def test_the_cli_manages_keys_that_a_running_foreman_picks_up(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    data_dir = settings().data_dir
    assert data_dir is not None

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "foreman", "users", "--data-dir", data_dir, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = await trio.to_thread.run_sync(cli, "add", "dora")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("fm_") and "shown once" in added.stderr
    taken = await trio.to_thread.run_sync(cli, "add", "dora")
    assert taken.returncode == 1
    assert taken.stderr == "foreman: name: a user 'dora' exists already\n"

    async with open_foreman(nursery, standin, data_dir=data_dir) as fm:
        assert (await fm.client.get("/api/tags")).status_code == 401
        assert (await fm.client.get("/api/tags", headers=bearer(key))).status_code == 200
        # revoked from another process (as `foreman users revoke` does): refused within REFRESH
        path = f"{data_dir}/foreman.db"

        def revoke() -> None:
            with sqlite3.connect(path) as db:
                db.row_factory = sqlite3.Row
                revoke_user(db, "dora")

        await trio.to_thread.run_sync(revoke)
        statuses = []
        # polled every 0.1 s for two REFRESH periods (the clock may jump while the
        # revoking thread runs, past one reload)
        for _ in range(int(REFRESH * 20) + 5):
            statuses.append((await fm.client.get("/api/tags", headers=bearer(key))).status_code)
            await trio.sleep(0.1)
        assert statuses[0] == 200 and statuses[-1] == 401  # the last user gone: still closed

    listed = await trio.to_thread.run_sync(cli, "list")
    assert "dora" in listed.stdout and "fm_" in listed.stdout and key not in listed.stdout
    assert (await trio.to_thread.run_sync(cli, "revoke", "nobody")).returncode == 1
