"""The outbound address policy and one gate per machine (issue 19).

Real sockets: a stand-in served on loopback plays the internal service an ordinary user
must not reach through foreman (so these tests run on the real clock).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpcore2
import httpx2 as httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from foreman.outbound import (
    REFUSED,
    AddressPolicy,
    PolicyBackend,
    policed_transport,
    resolve,
    server_key,
)
from foreman.settings import Settings
from foreman.standins.ollama import StandIn, serve

from .conftest import Foreman, chat_body, open_foreman

ADMIN = {"authorization": "Bearer s3cret-token"}
PUBLIC = "93.184.216.34"  # a globally routable address (example.com's, once)


@asynccontextmanager
async def internal_service(nursery: trio.Nursery) -> AsyncIterator[tuple[StandIn, int]]:
    """An Ollama stand-in on a loopback port: the internal service."""
    internal = StandIn(token_rate=1000.0)
    with trio.CancelScope() as scope:
        urls = await nursery.start(partial(serve, internal, "127.0.0.1:0"))
        yield internal, int(urls[0].rsplit(":", 1)[1])
        scope.cancel()


async def user(fm: Foreman, name: str, role: str = "user") -> dict[str, str]:
    made = await fm.client.post(
        "/admin/api/users", json={"name": name, "role": role}, headers=ADMIN
    )
    assert made.status_code == 201, made.text
    return {"authorization": f"Bearer {made.json()['key']}"}


async def settled(fm: Foreman, backend_id: int, headers: dict[str, str]) -> dict[str, Any]:
    """The backend's status once its first check has finished."""
    with trio.fail_after(10):
        while True:
            listed = (await fm.client.get("/admin/api/backends/status", headers=headers)).json()
            status = next(b["status"] for b in listed["backends"] if b["id"] == backend_id)
            if status["state"] != "connecting":
                return status
            await trio.sleep(0.02)


@asynccontextmanager
async def bob_beside_internal(
    nursery: trio.Nursery, standin: StandIn
) -> AsyncIterator[tuple[Foreman, dict[str, str], StandIn, int]]:
    """foreman with a user bob (his key's headers), and the internal service's port."""
    async with (
        internal_service(nursery) as (internal, port),
        open_foreman(nursery, standin, token="s3cret-token") as fm,
    ):
        yield fm, await user(fm, "bob"), internal, port


def test_the_policy_refuses_every_spelling_of_this_machine_and_private_networks() -> None:
    policy = AddressPolicy.of(
        Settings(listen="127.0.0.1:8080", user_networks=("192.168.1.0/24", "ollama.lan"))
    )
    for address in (
        "127.0.0.1",
        "127.1.2.3",
        "0.0.0.0",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "169.254.169.254",
        "fe80::1%eth0",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.2.1",
        "100.64.0.1",
        "224.0.0.251",
        "ff02::1",
        "fd00::1",
    ):
        assert not policy.allows(address, 11434), address
    assert policy.allows(PUBLIC, 11434) and policy.allows("2606:4700::1111", 443)
    assert policy.allows("192.168.1.20", 11434)  # FOREMAN_USER_NETWORKS
    assert policy.host_allowed("Ollama.LAN.") and not policy.host_allowed("other.lan")
    everything = AddressPolicy.of(Settings(listen="127.0.0.1:8080", user_networks=("0.0.0.0/0",)))
    assert everything.allows("127.0.0.1", 11434)
    assert not everything.allows("127.0.0.1", 8080)  # foreman itself, whatever the list


class Relocating(httpcore2.AsyncNetworkBackend):
    """Connects :data:`PUBLIC` to a loopback port (the "public" server lives here) and
    records every address it is asked for."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.asked: list[str] = []
        self.inner = httpcore2.TrioBackend()

    async def connect_tcp(self, host: str, port: int, **options: Any) -> Any:
        self.asked.append(host)
        if host == PUBLIC:
            host, port = "127.0.0.1", self.port
        return await self.inner.connect_tcp(host, port, **options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


async def test_a_name_that_rebinds_to_loopback_after_the_check_is_refused(
    nursery: trio.Nursery,
) -> None:
    async with internal_service(nursery) as (internal, port):
        answers = [[PUBLIC], ["127.0.0.1"]]  # first public, then the internal service

        async def rebinding(host: str, port: int) -> list[str]:
            assert host == "rebind.test"
            return answers.pop(0)

        relocating = Relocating(port)
        network = PolicyBackend(AddressPolicy(), resolver=rebinding, inner=relocating)
        url = f"http://rebind.test:{port}/api/version"
        async with httpx.AsyncClient(transport=policed_transport(network)) as first:
            # (Ollama on loopback answers 403 to a foreign Host: the name it knows)
            answer = await first.get(url, headers={"host": f"localhost:{port}"})
            assert answer.status_code == 200  # the public address
        async with httpx.AsyncClient(transport=policed_transport(network)) as second:
            with pytest.raises(httpx.ConnectError, match=f"^{REFUSED}$"):
                await second.get(url)
        assert relocating.asked == [PUBLIC]  # 127.0.0.1 was never connected to
        assert internal.requests["GET /api/version"] == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0", "2130706433", "[::1]"])
async def test_a_users_backend_cannot_reach_this_machine(
    nursery: trio.Nursery, standin: StandIn, host: str
) -> None:
    async with bob_beside_internal(nursery, standin) as (fm, bob, internal, port):
        body = {"name": "mine", "type": "ollama", "endpoint": f"http://{host}:{port}/secret?x="}
        added = await fm.client.post("/admin/api/backends", json=body, headers=bob)
        assert added.status_code == 201
        backend = added.json()["id"]
        status = await settled(fm, backend, bob)
        assert (status["state"], status["last_error"]) == ("unreachable", REFUSED)
        tested = await fm.client.post(f"/admin/api/backends/{backend}/test", headers=bob)
        assert (tested.json()["ok"], tested.json()["error"]) == (False, REFUSED)
        embed = await fm.client.post(
            "/api/embed", json={"model": "mine/nomic-embed-text", "input": "x"}, headers=bob
        )
        assert embed.status_code == 503 and "secret" not in embed.text.replace("/secret?", "")
        assert sum(internal.requests.values()) == 0  # not one request reached it


async def test_admins_backends_and_allowed_networks_reach_this_machine(
    nursery: trio.Nursery, standin: StandIn
) -> None:
    async with internal_service(nursery) as (internal, port):
        for networks, role, owner in (((), "user", None), (("127.0.0.0/8",), "user", "bob")):
            async with open_foreman(
                nursery, standin, token="s3cret-token", user_networks=networks
            ) as fm:
                bob = await user(fm, "bob", role)
                body = {"name": "lan", "type": "ollama", "endpoint": f"http://127.0.0.1:{port}"}
                if owner is None:  # the admin's shared backend may point anywhere
                    added = await fm.client.post("/admin/api/backends", json=body, headers=ADMIN)
                else:  # FOREMAN_USER_NETWORKS lets bob's reach loopback
                    added = await fm.client.post("/admin/api/backends", json=body, headers=bob)
                status = await settled(fm, added.json()["id"], ADMIN)
                assert status["state"] == "connected", status
                embed = await fm.client.post(
                    "/api/embed", json={"model": "lan/nomic-embed-text", "input": "x"}, headers=bob
                )
                assert embed.status_code == 200, embed.text
        assert internal.requests["POST /api/embed"] == 2


async def test_test_and_discovery_never_echo_a_backends_body(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    secret = "password=hunter2"

    def leaking(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": secret}}, headers={"x": secret})

    endpoint = "http://openai.test/v1"
    async with open_foreman(
        nursery, standin, backend_transports={endpoint: httpx.MockTransport(leaking)}
    ) as fm:
        body = {"name": "gpt", "type": "openai", "endpoint": endpoint, "api_key": "sk-x"}
        added = (await fm.client.post("/admin/api/backends", json=body)).json()
        tested = (await fm.client.post(f"/admin/api/backends/{added['id']}/test")).json()
        assert (tested["ok"], tested["error"]) == (False, "HTTP 500")
        assert tested["status"]["last_error"] == "HTTP 500"
        models = await fm.client.get(f"/admin/api/backends/{added['id']}/models?refresh=true")
        assert models.status_code == 502 and secret not in models.text
        listed = await fm.client.get("/admin/api/backends")
        assert secret not in listed.text


@asynccontextmanager
async def webhook_receiver(nursery: trio.Nursery) -> AsyncIterator[tuple[list[Any], str]]:
    """A webhook receiver on a loopback port: answers 200, keeps each body."""
    received: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        received.append(json.loads(body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = Config()
    config.bind = ["127.0.0.1:0"]
    with trio.CancelScope() as scope:
        urls = await nursery.start(partial(hypercorn_serve, app, config))
        yield received, urls[0]
        scope.cancel()


async def test_a_users_webhook_cannot_reach_this_machine(
    nursery: trio.Nursery, standin: StandIn
) -> None:
    async with (
        webhook_receiver(nursery) as (received, url),
        open_foreman(nursery, standin, token="s3cret-token") as fm,
    ):
        bob = await user(fm, "bob")
        ids = {}
        for name, headers in (("bob", bob), ("admin", ADMIN)):
            job = {"endpoint": "embed", "request": {"model": "nomic-embed-text", "input": "x"}}
            job["state_webhook_url"] = f"{url}/hook"
            submitted = await fm.client.post("/jobs", json=job, headers=headers)
            assert submitted.status_code == 202, submitted.text
            ids[name] = submitted.json()["id"]
        states = ["queued", "running", "succeeded"]  # the admin's job's
        with trio.fail_after(10):
            while [body["state"] for body in received] != states:  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert {body["id"] for body in received} == {ids["admin"]}  # none of bob's
        shown = (await fm.client.get(f"/jobs/{ids['bob']}", headers=bob)).json()
        assert shown["webhook"]["deliveries"] == 0 and shown["webhook"]["last_status"] is None


async def test_one_gate_per_machine_however_the_url_spells_it(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: trio.abc.Clock
) -> None:
    spelled = "http://localhost:11434"
    async with open_foreman(
        nursery, standin, backend_transports={spelled: standin.transport(nursery)}
    ) as fm:
        added = await fm.client.post(
            "/admin/api/backends", json={"name": "same", "type": "ollama", "endpoint": spelled}
        )
        assert added.status_code == 201
        standin.reset_stats()
        async with trio.open_nursery() as chats:
            for index in range(6):
                model = "llama3.2" if index % 2 else "same/llama3.2"
                body = chat_body(model, text=f"hello {index}")
                chats.start_soon(partial(fm.client.post, "/api/chat", json=body))
        assert standin.chats_total == 6 and standin.max_chats_in_flight == 1
        backend_id = added.json()["id"]
        assert fm.gw.backends.running[backend_id].gate is fm.gw.gate
        # re-resolved when the backend changes: another machine, another gate; and back
        path = f"/admin/api/backends/{backend_id}"
        await fm.client.patch(path, json={"endpoint": "http://192.0.2.1:11434"})
        assert fm.gw.backends.running[backend_id].gate is not fm.gw.gate
        await fm.client.patch(path, json={"endpoint": "http://[::1]:11434/"})
        assert fm.gw.backends.running[backend_id].gate is fm.gw.gate


async def test_server_keys_resolve_every_spelling_of_one_machine() -> None:
    async def names(host: str, port: int) -> list[str]:
        return ["192.168.1.7"] if host.endswith(".lan") else await resolve(host, port)

    local = {
        await server_key(f"http://{host}:11434", names)
        for host in ("localhost", "127.0.0.1", "[::1]", "0.0.0.0", "LOCALHOST")
    }
    assert local == {"local:11434"}
    assert await server_key("http://ollama.lan:11434", names) == "192.168.1.7:11434"
    assert await server_key("http://alias.lan:11434/x", names) == "192.168.1.7:11434"
    assert await server_key("http://127.0.0.1:11435", names) == "local:11435"


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_users_claude_or_openai_backend_cannot_reach_this_machine(
    nursery: trio.Nursery, standin: StandIn, kind: str
) -> None:
    async with bob_beside_internal(nursery, standin) as (fm, bob, internal, port):
        body = {"name": "api", "type": kind, "endpoint": f"http://localhost:{port}/v1"}
        added = await fm.client.post(
            "/admin/api/backends", json={**body, "api_key": "sk-bob"}, headers=bob
        )
        backend = added.json()["id"]
        status = await settled(fm, backend, bob)
        assert (status["state"], status["last_error"]) == ("unreachable", REFUSED)
        tested = await fm.client.post(f"/admin/api/backends/{backend}/test", headers=bob)
        assert tested.json()["error"] == REFUSED
        assert sum(internal.requests.values()) == 0
