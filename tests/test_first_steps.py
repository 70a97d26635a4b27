"""What a newcomer trips on (issue 21): the answers, names and messages of a first try.

The README's own blocks run in tests/test_readme.py; the settings pages' layout in
tests/test_browser.py.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from typing import Any

import click
import pytest
import trio
from click.testing import CliRunner

from foreman.cli import DEMO_MODELS, main, parse_models
from foreman.jobs.cli import default_url
from foreman.standins.ollama import StandIn
from foreman.users import create_user

from .conftest import Foreman, chat_body, open_foreman, reads_for_unknown_keys
from .test_backends import add_connected, wait_connected, with_second

# --- the answer's model echoes the name asked for; a bare backend name routes -------------


async def test_a_routed_answer_names_the_model_as_the_client_asked_for_it(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin) as (fm, second):
        added = await add_connected(fm)  # second's selected model: qwen2.5-coder:32b
        prefs = {"aliases": {"code": "second/qwen2.5-coder:32b"}}
        assert (await fm.client.put("/admin/api/preferences", json=prefs)).status_code == 200

        asked = {
            "second/llama3.2": "second/llama3.2",
            "code": "second/qwen2.5-coder:32b",
            "second": "second/qwen2.5-coder:32b",  # a bare backend name: its selected model
            "llama3.2": "ollama/llama3.2",
        }
        for name, label in asked.items():
            answer = await fm.client.post("/api/chat", json=chat_body(name, stream=False))
            assert answer.status_code == 200, (name, answer.text)
            assert answer.headers["x-foreman-backend"] == label
            assert answer.json()["model"] == name  # as Ollama echoes a request's model
            assert int(answer.headers["content-length"]) == len(answer.content)
        assert second.chats_total == 3 and standin.chats_total == 1

        async with fm.client.stream("POST", "/api/chat", json=chat_body("code")) as stream:
            lines = [json.loads(line) async for line in stream.aiter_lines() if line]
        assert len(lines) > 2 and {line["model"] for line in lines} == {"code"}
        assert lines[-1]["done"] is True

        embed = await fm.client.post("/api/embed", json={"model": "second/llama3.2", "input": "x"})
        assert embed.status_code == 200 and embed.json()["model"] == "second/llama3.2"
        assert added["name"] == "second"


async def test_the_openai_and_anthropic_faces_echo_the_name_asked_for_too(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin) as (fm, second):
        await add_connected(fm)
        prefs = {"aliases": {"code": "second/qwen2.5-coder:32b"}}
        assert (await fm.client.put("/admin/api/preferences", json=prefs)).status_code == 200
        messages = [{"role": "user", "content": "hello there"}]
        for path, extra in (
            ("/v1/chat/completions", {}),
            ("/v1/completions", {"prompt": "hello there"}),
            ("/v1/messages", {"max_tokens": 16}),
        ):
            body = {"model": "code", "messages": messages, **extra}
            if path == "/v1/completions":
                del body["messages"]
            whole = await fm.client.post(path, json=body)
            assert whole.status_code == 200, (path, whole.text)
            assert whole.json()["model"] == "code", path
            assert int(whole.headers["content-length"]) == len(whole.content)
            streamed = await fm.client.post(path, json={**body, "stream": True})
            models = [
                event.get("model") or event.get("message", {}).get("model")
                for line in streamed.text.splitlines()
                if line.startswith("data: {")
                for event in [json.loads(line[6:])]
            ]
            named = {m for m in models if m}
            assert named == {"code"}, (path, named)
        assert second.chats_total == 6 and standin.chats_total == 0


async def test_a_bare_name_that_is_a_model_of_the_default_backend_stays_that_model(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin) as (fm, second):
        await add_connected(fm, name="llama3.2")  # a backend named like a model
        answer = await fm.client.post("/api/chat", json=chat_body("llama3.2", stream=False))
        assert answer.headers["x-foreman-backend"] == "ollama/llama3.2"
        assert standin.chats_total == 1 and second.chats_total == 0


async def test_a_malformed_body_names_no_backend(fm: Foreman) -> None:
    answer = await fm.client.post("/api/chat", content=b'{"model": ')
    assert answer.status_code == 400
    assert "x-foreman-backend" not in answer.headers


# --- the backends API ---------------------------------------------------------------------


async def test_select_model_takes_model_name_and_says_when_it_is_missing(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin) as (fm, _):
        added = await add_connected(fm)
        url = f"/admin/api/backends/{added['id']}/select-model"
        chosen = await fm.client.post(url, json={"modelName": "llama3.2:latest"})
        assert chosen.status_code == 200, chosen.text
        assert chosen.json()["selected_model"] == "llama3.2:latest"
        for body in ({}, {"model": ""}, {"modelName": None}):
            missing = await fm.client.post(url, json=body)
            assert missing.status_code == 422 and missing.json()["field"] == "model"
            assert "required" in missing.json()["error"], missing.text
        wrong = await fm.client.post(url, json={"model": "nope"})
        assert "not a model of backend" in wrong.json()["error"]


async def test_a_dead_backends_models_are_not_available(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin) as (fm, second):
        added = await add_connected(fm)
        url = f"/admin/api/backends/{added['id']}/models"
        models = (await fm.client.get(url)).json()["models"]
        assert models and all(m["available"] for m in models)
        second.reachable = False
        await trio.sleep(31)  # the heartbeat notices
        assert (await wait_connected(fm, added["id"]))["state"] == "unreachable"
        models = (await fm.client.get(url)).json()["models"]
        assert models and not any(m["available"] for m in models)
        second.reachable = True
        await trio.sleep(31)
        models = (await fm.client.get(url)).json()["models"]
        assert all(m["available"] for m in models)


# --- keys ---------------------------------------------------------------------------------


async def test_a_key_made_by_another_process_works_on_its_first_request(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with open_foreman(nursery, standin, token="the-admin-token") as fm:
        db = sqlite3.connect(os.path.join(fm.gw.settings.data_path, "foreman.db"))
        db.row_factory = sqlite3.Row
        with db:  # what `foreman users add` does from its own process
            _, key = create_user(db, "ada", "admin")
        db.close()
        headers = {"authorization": f"Bearer {key}"}
        start = trio.current_time()
        answer = await fm.client.get("/api/tags", headers=headers)
        assert answer.status_code == 200, answer.text
        assert trio.current_time() - start < 1  # not the 5 s refresh

        # a flood of unknown keys at once costs one read of the store, not one each;
        # a key that is not foreman's none
        assert await reads_for_unknown_keys(fm) == (1, 0)


# --- the command line ---------------------------------------------------------------------


def test_the_jobs_command_finds_foreman_where_foreman_listen_puts_it() -> None:
    assert default_url({}) == "http://127.0.0.1:8080"
    assert default_url({"FOREMAN_LISTEN": "127.0.0.1:42080"}) == "http://127.0.0.1:42080"
    assert default_url({"FOREMAN_LISTEN": "0.0.0.0:9000"}) == "http://127.0.0.1:9000"
    assert default_url({"FOREMAN_LISTEN": "[::]:9000"}) == "http://[::1]:9000"
    tls = {"FOREMAN_LISTEN": "gpu-box:8443", "FOREMAN_TLS_CERT": "c.pem"}
    assert default_url(tls) == "https://gpu-box:8443"
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        port = closed_port.getsockname()[1]
    env = {"FOREMAN_LISTEN": f"127.0.0.1:{port}", "FOREMAN_URL": None}
    result = CliRunner().invoke(main, ["jobs", "list"], env=env)
    assert result.exit_code == 1
    assert f"cannot reach foreman at http://127.0.0.1:{port}" in result.output


def test_demo_says_it_is_the_stand_ins_address_that_is_busy() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        result = CliRunner().invoke(
            main, ["demo", "--standin-listen", address, "--listen", "127.0.0.1:0"]
        )
    assert result.exit_code == 1
    assert f"the stand-in target cannot listen on {address}" in result.output
    assert "--standin-listen" in result.output


def test_stand_in_models_are_named_with_their_sizes() -> None:
    specs = parse_models("qwen2.5-coder:32b=19.9GB, nomic-embed-text=274MB,qwen3:8b,tiny=2KiB")
    assert [(s.name, s.size) for s in specs[:2]] == [
        ("qwen2.5-coder:32b", 19_900_000_000),
        ("nomic-embed-text:latest", 274_000_000),
    ]
    assert specs[0].capabilities == ("completion", "tools")
    assert specs[1].capabilities == ("embedding",)
    assert "thinking" in specs[2].capabilities  # the stand-in's own qwen3:8b keeps its details
    assert specs[3].size == 2048
    for bad in ("", "x=big", "bad name=1GB", "a,,b"):
        with pytest.raises(click.BadParameter):
            parse_models(bad)
    names = [s.name for s in parse_models(DEMO_MODELS)]
    assert "qwen2.5-coder:32b" in names and "nomic-embed-text:latest" in names


async def test_the_stand_in_lists_the_models_it_was_given(nursery: trio.Nursery) -> None:
    standin = StandIn(models=parse_models("qwen2.5-coder:32b=19.9GB,nomic-embed-text=274MB"))
    async with open_foreman(nursery, standin) as fm:
        tags = (await fm.client.get("/api/tags")).json()["models"]
    assert sorted((m["name"], m["size"]) for m in tags) == [
        ("nomic-embed-text:latest", 274_000_000),
        ("qwen2.5-coder:32b", 19_900_000_000),
    ]
