"""Several Ollama backends: the registry API, discovery, status, routing, users, restarts.

Claude and OpenAI-compatible backends are in ``tests/test_api_backends.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx2 as httpx
import trio

from foreman.standins.ollama import ModelSpec, StandIn

from .conftest import Foreman, chat_body, open_foreman, settings

SECOND = "http://127.0.0.1:11435"
SECOND_MODELS = (
    ModelSpec.completion("qwen2.5-coder:32b", size=19_851_336_256),
    ModelSpec.completion("llama3.2:latest"),
)


def second_standin() -> StandIn:
    return StandIn(models=SECOND_MODELS, token_rate=10.0)


async def add_backend(fm: Foreman, **fields: Any) -> dict[str, Any]:
    body = {"name": "second", "type": "ollama", "endpoint": SECOND, **fields}
    answer = await fm.client.post("/admin/api/backends", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def wait_connected(
    fm: Foreman, backend_id: int, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    while True:
        answer = await fm.client.get("/admin/api/backends/status", headers=headers)
        listed = answer.json()["backends"]
        status = next(b["status"] for b in listed if b["id"] == backend_id)
        if status["state"] != "connecting":
            return status
        await trio.sleep(0.1)


@asynccontextmanager
async def with_second(
    nursery: trio.Nursery, standin: StandIn, second: StandIn | None = None, **changes: Any
) -> AsyncIterator[tuple[Foreman, StandIn]]:
    """foreman in front of ``standin``, with a second stand-in reachable at :data:`SECOND`."""
    second = second or second_standin()
    transports = {SECOND: second.transport(nursery)}
    async with open_foreman(nursery, standin, backend_transports=transports, **changes) as fm:
        yield fm, second


async def add_connected(fm: Foreman, **fields: Any) -> dict[str, Any]:
    """:func:`add_backend`, once its first check has finished."""
    added = await add_backend(fm, **fields)
    await wait_connected(fm, added["id"])
    return added


async def test_the_builtin_backend_is_listed_and_cannot_be_deleted(fm: Foreman) -> None:
    listed = (await fm.client.get("/admin/api/backends")).json()["backends"]
    assert [
        (b["name"], b["type"], b["endpoint"], b["builtin"], b["is_default"]) for b in listed
    ] == [("ollama", "ollama", "http://127.0.0.1:11434", True, True)]
    assert listed[0]["status"]["state"] == "connected"
    assert listed[0]["status"]["model_count"] == len(fm.standin.models)
    gone = await fm.client.delete(f"/admin/api/backends/{listed[0]['id']}")
    assert gone.status_code == 422 and gone.json()["field"] == "id"
    moved = await fm.client.patch(
        f"/admin/api/backends/{listed[0]['id']}", json={"endpoint": "http://elsewhere:1"}
    )
    assert moved.status_code == 422 and moved.json()["field"] == "endpoint"


async def test_add_an_ollama_backend_discovers_its_models_with_sizes(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin) as (fm, second):
        added = await add_backend(fm, api_key="a-proxy-token-1234")
        assert added["api_key"] == "…1234"  # masked, never the key
        assert (await wait_connected(fm, added["id"]))["state"] == "connected"
        models = (await fm.client.get(f"/admin/api/backends/{added['id']}/models")).json()
        assert [(m["name"], m["size_bytes"], m["is_selected"]) for m in models["models"]] == [
            ("llama3.2:latest", SECOND_MODELS[1].size, False),
            ("qwen2.5-coder:32b", 19_851_336_256, True),  # the first one found
        ]
        assert second.last_headers["authorization"] == "Bearer a-proxy-token-1234"
        tested = (await fm.client.post(f"/admin/api/backends/{added['id']}/test")).json()
        assert tested["ok"] and tested["models"] == ["llama3.2:latest", "qwen2.5-coder:32b"]
        chosen = await fm.client.post(
            f"/admin/api/backends/{added['id']}/select-model", json={"model": "llama3.2:latest"}
        )
        assert chosen.json()["selected_model"] == "llama3.2:latest"
        wrong = await fm.client.post(
            f"/admin/api/backends/{added['id']}/select-model", json={"model": "nope"}
        )
        assert wrong.status_code == 422 and wrong.json()["field"] == "model"

        # a model that disappears keeps its row and its old last_seen_at
        second.remove_model("llama3.2")
        await trio.sleep(1)
        refreshed = await fm.client.get(f"/admin/api/backends/{added['id']}/models?refresh=true")
        rows = {m["name"]: m for m in refreshed.json()["models"]}
        assert rows["llama3.2:latest"]["available"] is False
        assert rows["qwen2.5-coder:32b"]["available"] is True
        assert rows["llama3.2:latest"]["last_seen_at"] < rows["qwen2.5-coder:32b"]["last_seen_at"]

        # unreachable: the heartbeat (its tags poller) says so within an interval
        second.reachable = False
        await trio.sleep(31)
        status = await wait_connected(fm, added["id"])
        assert status["state"] == "unreachable" and not status["healthy"]
        assert "unreachable" in status["last_error"]
        failed = (await fm.client.post(f"/admin/api/backends/{added['id']}/test")).json()
        assert not failed["ok"] and "unreachable" in failed["error"]


async def test_api_keys_are_encrypted_at_rest_and_never_shown(fm: Foreman) -> None:
    added = await add_backend(fm, api_key="sk-secret-value-000111")
    listed = (await fm.client.get("/admin/api/backends")).json()["backends"]
    assert "sk-secret-value-000111" not in json.dumps(listed)
    db = sqlite3.connect(os.path.join(fm.gw.settings.data_path, "foreman.db"))
    (stored,) = db.execute("SELECT api_key FROM backends WHERE id = ?", (added["id"],)).fetchone()
    assert b"sk-secret-value" not in stored and stored.startswith(b"gAAAAA")  # a Fernet token
    key_file = os.path.join(fm.gw.settings.data_path, "secret.key")
    assert os.stat(key_file).st_mode & 0o777 == 0o600


async def test_validation_names_the_field(fm: Foreman) -> None:
    cases = [
        ({"name": "a/b", "type": "ollama", "endpoint": SECOND}, "name"),
        ({"name": "x", "type": "gemini", "endpoint": SECOND}, "type"),
        ({"name": "x", "type": "ollama", "endpoint": "ftp://h"}, "endpoint"),
        ({"name": "x", "type": "ollama"}, "endpoint"),
        ({"name": "x", "type": "anthropic"}, "api_key"),
        ({"name": "x", "type": "ollama", "endpoint": SECOND, "is_active": "yes"}, "is_active"),
        ({"name": "x", "type": "ollama", "endpoint": SECOND, "colour": 1}, "colour"),
        ({"name": "ollama", "type": "ollama", "endpoint": SECOND}, "name"),  # taken
    ]
    for body, field in cases:
        answer = await fm.client.post("/admin/api/backends", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["field"] == field, body
        assert answer.json()["error"].startswith(field + ":")
    bad_prefs = await fm.client.put("/admin/api/preferences", json={"default_backend_id": 999})
    assert bad_prefs.status_code == 422 and bad_prefs.json()["field"] == "default_backend_id"


async def test_routing_by_prefix_and_alias_one_chat_at_a_time_per_backend(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin) as (fm, second):
        await add_connected(fm)
        prefs = {"aliases": {"code": "second/qwen2.5-coder:32b", "fast": "llama3.2"}}
        assert (await fm.client.put("/admin/api/preferences", json=prefs)).status_code == 200

        answer = await fm.client.post("/api/chat", json=chat_body("code", stream=False))
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-foreman-backend"] == "second/qwen2.5-coder:32b"
        assert answer.json()["model"] == "code"  # the name asked for, as Ollama echoes it
        assert second.chats_total == 1 and standin.chats_total == 0

        answer = await fm.client.post("/api/chat", json=chat_body("second/llama3.2", stream=False))
        assert answer.headers["x-foreman-backend"] == "second/llama3.2"
        assert second.chats_total == 2
        answer = await fm.client.post("/api/chat", json=chat_body("fast", stream=False))
        assert answer.headers["x-foreman-backend"] == "ollama/llama3.2"
        assert standin.chats_total == 1
        embed = await fm.client.post("/api/embed", json={"model": "second/llama3.2", "input": "x"})
        assert embed.status_code == 200 and second.embeds_total == 1

        # six chats on each backend at once: never two at once on one, but both at once
        async def chat(model: str) -> None:
            reply = await fm.client.post("/api/chat", json=chat_body(model, stream=False))
            assert reply.status_code == 200

        overlap = 0

        async def watch() -> None:
            nonlocal overlap
            while True:
                overlap = max(overlap, min(standin.chats_in_flight, second.chats_in_flight))
                await trio.sleep(0.01)

        async with trio.open_nursery() as chats:
            chats.start_soon(watch)
            async with trio.open_nursery() as senders:
                for _ in range(6):
                    senders.start_soon(chat, "llama3.2")
                    senders.start_soon(chat, "code")
            chats.cancel_scope.cancel()
        assert standin.max_chats_in_flight == 1 and second.max_chats_in_flight == 1
        assert overlap == 1  # the two backends' slots are independent

        tags = (await fm.client.get("/api/tags")).json()["models"]
        names = [m["name"] for m in tags]
        assert names[: len(standin.models)] == [
            m["name"] for m in (await fm.target.get("/api/tags")).json()["models"]
        ]
        assert "code" in names and "fast" in names
        assert "second/qwen2.5-coder:32b" in names and "second/llama3.2:latest" in names
        sized = next(m for m in tags if m["name"] == "second/qwen2.5-coder:32b")
        assert sized["size"] == 19_851_336_256


async def test_users_see_their_own_backends_only(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin, token="root") as (fm, second):
        admin = {"authorization": "Bearer root"}
        keys = {}
        for name in ("alice", "bob"):
            made = await fm.client.post("/admin/api/users", json={"name": name}, headers=admin)
            keys[name] = {"authorization": f"Bearer {made.json()['key']}"}
        mine = await fm.client.post(
            "/admin/api/backends",
            json={"name": "second", "type": "ollama", "endpoint": SECOND},
            headers=keys["alice"],
        )
        assert mine.status_code == 201 and mine.json()["owner"] == "alice"
        await wait_connected(fm, mine.json()["id"], keys["alice"])
        bob_sees = (await fm.client.get("/admin/api/backends", headers=keys["bob"])).json()
        assert [b["name"] for b in bob_sees["backends"]] == ["ollama"]
        hidden = await fm.client.get(
            f"/admin/api/backends/{mine.json()['id']}/models", headers=keys["bob"]
        )
        assert hidden.status_code == 404
        shared = bob_sees["backends"][0]["id"]
        refused = await fm.client.patch(
            f"/admin/api/backends/{shared}", json={"is_active": False}, headers=keys["bob"]
        )
        assert refused.status_code == 403

        body = chat_body("second/qwen2.5-coder:32b", stream=False)
        routed = await fm.client.post("/api/chat", json=body, headers=keys["alice"])
        assert routed.headers["x-foreman-backend"] == "second/qwen2.5-coder:32b"
        not_routed = await fm.client.post("/api/chat", json=body, headers=keys["bob"])
        assert not_routed.status_code == 404  # bob's default backend has no such model
        assert not_routed.json() == {"error": "model 'second/qwen2.5-coder:32b' not found"}
        # alice's tags list her backend; bob's stay the target's own bytes
        assert (
            "second/qwen2.5-coder:32b"
            in (await fm.client.get("/api/tags", headers=keys["alice"])).text
        )
        bobs = await fm.client.get("/api/tags", headers=keys["bob"])
        assert bobs.content == (await fm.target.get("/api/tags")).content


async def test_delete_stops_the_backend_and_a_restart_keeps_the_selection(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    second, data_dir = second_standin(), settings().data_dir
    async with with_second(nursery, standin, second, data_dir=data_dir) as (fm, _):
        added = await add_connected(fm, api_key="tok-abcdefgh1234")
        await fm.client.post(
            f"/admin/api/backends/{added['id']}/select-model", json={"model": "llama3.2:latest"}
        )
        await fm.client.put("/admin/api/preferences", json={"default_backend_id": added["id"]})
    async with with_second(nursery, standin, second, data_dir=data_dir) as (fm, _):
        await wait_connected(fm, added["id"])
        listed = (await fm.client.get("/admin/api/backends")).json()["backends"]
        again = next(b for b in listed if b["id"] == added["id"])
        assert again["selected_model"] == "llama3.2:latest" and again["api_key"] == "…1234"
        answer = await fm.client.post("/api/chat", json=chat_body("llama3.2", stream=False))
        assert answer.headers["x-foreman-backend"] == "second/llama3.2"  # the user's default
        polls = second.requests["GET /api/tags"]
        assert (await fm.client.delete(f"/admin/api/backends/{added['id']}")).status_code == 204
        await trio.sleep(120)
        assert second.requests["GET /api/tags"] == polls  # its poller is gone
        prefs = (await fm.client.get("/admin/api/preferences")).json()
        assert prefs["default_backend_id"] is None
        answer = await fm.client.post("/api/chat", json=chat_body("llama3.2", stream=False))
        assert answer.headers["x-foreman-backend"] == "ollama/llama3.2"


async def test_an_inactive_backend_is_not_routed_to(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin) as (fm, second):
        added = await add_backend(fm, is_active=False)
        status = (await fm.client.get("/admin/api/backends/status")).json()["backends"]
        assert next(b for b in status if b["id"] == added["id"])["status"]["state"] == "inactive"
        answer = await fm.client.post("/api/chat", json=chat_body("second/llama3.2", stream=False))
        assert answer.status_code == 404 and second.requests["GET /api/tags"] == 0
        on = await fm.client.patch(f"/admin/api/backends/{added['id']}", json={"is_active": True})
        assert on.status_code == 200
        await wait_connected(fm, added["id"])
        answer = await fm.client.post("/api/chat", json=chat_body("second/llama3.2", stream=False))
        assert answer.status_code == 200 and second.chats_total == 1


async def test_bad_json_to_the_admin_api(fm: Foreman) -> None:
    answer = await fm.client.post(
        "/admin/api/backends", content=b"{", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422 and answer.json()["field"] == "body"


# --- regressions found in review -------------------------------------------------------


async def test_a_hostile_model_list_marks_the_backend_broken_and_foreman_goes_on(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"[]", headers={"content-type": "application/json"})

    evil = "http://evil.test/v1"
    async with open_foreman(
        nursery, standin, backend_transports={evil: httpx.MockTransport(handler)}
    ) as fm:
        added = await add_backend(fm, name="mine", type="openai", endpoint=evil)
        status = await wait_connected(fm, added["id"])
        assert status["state"] == "unreachable" and "unreadable" in status["last_error"]
        await trio.sleep(100)  # heartbeats go on failing, foreman goes on serving
        assert (await fm.client.get("/api/tags")).status_code == 200


async def test_a_change_that_leaves_a_backend_unusable_is_refused(fm: Foreman) -> None:
    added = await add_backend(fm)
    for change, field in [
        ({"endpoint": None}, "endpoint"),
        ({"endpoint": "http://h:abc"}, "endpoint"),
        ({"endpoint": "http://[::1"}, "endpoint"),
        ({"endpoint": "http://user:pw@h:1"}, "endpoint"),
        ({"type": "anthropic"}, "api_key"),
    ]:
        answer = await fm.client.patch(f"/admin/api/backends/{added['id']}", json=change)
        assert answer.status_code == 422 and answer.json()["field"] == field, change
    builtin = next(
        b for b in (await fm.client.get("/admin/api/backends")).json()["backends"] if b["builtin"]
    )
    off = await fm.client.patch(f"/admin/api/backends/{builtin['id']}", json={"is_active": False})
    assert off.status_code == 422 and off.json()["field"] == "is_active"


async def test_one_gate_per_ollama_server_across_restarts_and_backends(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    second = StandIn(models=SECOND_MODELS, token_rate=2.0)
    transports = {
        SECOND: second.transport(nursery),
        "http://127.0.0.1:11434": standin.transport(nursery),
    }
    async with open_foreman(nursery, standin, backend_transports=transports) as fm:
        added = await add_connected(fm)
        # a second backend naming the builtin's server shares the builtin's gate
        same = await add_backend(fm, name="again", endpoint="http://127.0.0.1:11434/")
        await wait_connected(fm, same["id"])

        async def chat(model: str) -> None:
            reply = await fm.client.post("/api/chat", json=chat_body(model, stream=False))
            assert reply.status_code == 200, reply.text

        async with trio.open_nursery() as chats:
            chats.start_soon(chat, "second/llama3.2")
            chats.start_soon(chat, "second/llama3.2")
            chats.start_soon(chat, "llama3.2")
            chats.start_soon(chat, "again/llama3.2")
            await trio.sleep(1)
            rotated = {"api_key": "rotated-key-123456"}  # restarts the backend's tasks
            assert (
                await fm.client.patch(f"/admin/api/backends/{added['id']}", json=rotated)
            ).status_code == 200
            await wait_connected(fm, added["id"])
            chats.start_soon(chat, "second/llama3.2")
        assert second.max_chats_in_flight == 1 and standin.max_chats_in_flight == 1
        assert second.chats_total == 3 and standin.chats_total == 2


async def test_concurrent_changes_leave_one_task_tree(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin) as (fm, second):
        added = await add_connected(fm)
        async with trio.open_nursery() as patches:
            for key in ("aaaaaaaaaaaa1111", "bbbbbbbbbbbb2222"):
                patches.start_soon(
                    partial(
                        fm.client.patch, f"/admin/api/backends/{added['id']}", json={"api_key": key}
                    )
                )
        assert (await fm.client.delete(f"/admin/api/backends/{added['id']}")).status_code == 204
        await trio.sleep(5)
        polls = second.requests["GET /api/tags"]
        await trio.sleep(300)
        assert second.requests["GET /api/tags"] == polls


async def test_routed_names_are_checked_and_rewritten_as_go_reads_bodies(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin) as (fm, second):
        await add_connected(fm)
        # an alias to a cloud model skips the inventory check, as the name itself would
        await fm.client.put(
            "/admin/api/preferences", json={"aliases": {"big": "gpt-oss:120b-cloud"}}
        )
        direct = await fm.client.post(
            "/api/chat", json=chat_body("gpt-oss:120b-cloud", stream=False)
        )
        via = await fm.client.post("/api/chat", json=chat_body("big", stream=False))
        assert (via.status_code, via.content) == (direct.status_code, direct.content)
        assert standin.requests["POST /api/chat"] == 2
        # invalid UTF-8 and bytes after the JSON value: read and rewritten as Go reads them
        latin1 = (
            b'{"model":"second/llama3.2","stream":false,'
            b'"messages":[{"role":"user","content":"caf\xe9"}]}'
        )
        for body in (latin1, latin1 + b"\ntrailing"):
            answer = await fm.client.post("/api/chat", content=body)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-foreman-backend"] == "second/llama3.2"


async def test_unauthenticated_health_shows_shared_backends_only(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with open_foreman(nursery, standin, token="root") as fm:
        admin = {"authorization": "Bearer root"}
        made = await fm.client.post("/admin/api/users", json={"name": "alice"}, headers=admin)
        alice = {"authorization": f"Bearer {made.json()['key']}"}
        body = {"name": "alice-secret-proj", "type": "ollama", "endpoint": SECOND}
        assert (
            await fm.client.post("/admin/api/backends", json=body, headers=alice)
        ).status_code == 201
        health = await fm.client.get("/healthz")
        assert [b["name"] for b in health.json()["backends"]] == ["ollama"]
        assert "alice-secret-proj" not in health.text
        own_default = {**body, "name": "x", "is_default": True}
        refused = await fm.client.post(
            "/admin/api/backends", json={**own_default, "owner": "alice"}, headers=admin
        )
        assert refused.status_code == 422 and refused.json()["field"] == "is_default"
