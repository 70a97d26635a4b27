"""Lifecycle over real loopback sockets (default clock): graceful shutdown and start-up errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx2 as httpx
import pytest
import trio

from foreman import run
from foreman.standin import StandIn
from foreman.standin import serve as serve_standin

from .conftest import chat_body, settings


@asynccontextmanager
async def real_foreman(
    standin: StandIn, **changes: object
) -> AsyncIterator[tuple[str, trio.Event, trio.Event]]:
    """foreman and the stand-in on 127.0.0.1:0; yields (foreman URL, shutdown trigger, stopped)."""
    shutdown, stopped = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        target_urls = await nursery.start(partial(serve_standin, standin, "127.0.0.1:0"))
        config = settings(ollama_url=target_urls[0], listen="127.0.0.1:0", **changes)

        async def run_foreman(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await run(config, shutdown_trigger=shutdown.wait, task_status=task_status)
            stopped.set()

        urls = await nursery.start(run_foreman)
        yield urls[0], shutdown, stopped
        nursery.cancel_scope.cancel()


async def test_shutdown_lets_an_in_flight_stream_finish() -> None:
    standin = StandIn(token_rate=20.0, reply_tokens=10)
    with trio.fail_after(15):
        async with real_foreman(standin, grace=10.0) as (url, shutdown, stopped):
            async with httpx.AsyncClient(base_url=url) as client:
                async with client.stream("POST", "/api/chat", json=chat_body()) as response:
                    assert "server" not in response.headers  # Ollama sends none
                    lines = []
                    async for line in response.aiter_lines():
                        lines.append(json.loads(line))
                        if len(lines) == 1:
                            shutdown.set()
                await stopped.wait()
            assert lines[-1]["done"] is True
            with pytest.raises(httpx.ConnectError):  # no longer accepting
                async with httpx.AsyncClient(base_url=url) as client:
                    await client.get("/api/tags")


async def test_the_end_of_grace_ends_streams_with_an_error_line_and_waiters_with_503() -> None:
    standin = StandIn(token_rate=10.0, reply_tokens=1000)
    with trio.fail_after(15):
        async with real_foreman(standin, grace=0.5) as (url, shutdown, stopped):
            waiter: list[httpx.Response] = []

            async def wait_at_the_gate(client: httpx.AsyncClient) -> None:
                waiter.append(await client.post("/api/chat", json=chat_body(stream=False)))

            async with (
                httpx.AsyncClient(base_url=url) as client,
                httpx.AsyncClient(base_url=url) as other,
                trio.open_nursery() as nursery,
            ):
                async with client.stream("POST", "/api/chat", json=chat_body()) as response:
                    lines = []
                    async for line in response.aiter_lines():
                        lines.append(json.loads(line))
                        if len(lines) == 1:
                            nursery.start_soon(wait_at_the_gate, other)
                            await trio.sleep(0.1)
                            shutdown.set()
                begun = trio.current_time()
                await stopped.wait()
                assert trio.current_time() - begun < 5
            assert lines[-1] == {"error": "foreman is shutting down"}
            assert len(lines) > 2 and "done" not in lines[-1]
            assert waiter[0].status_code == 503
            assert waiter[0].json()["error"] == (
                "server busy, please try again.  maximum pending requests exceeded"
            )
            await trio.sleep(0.2)
            assert standin.chats_in_flight == 0  # the upstream request was aborted
            assert standin.chats_total == 1  # the waiter never reached the target


def foreman_command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foreman", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FOREMAN_POLL_INTERVAL", "soon"),
        ("FOREMAN_LISTEN", "8080"),
        ("FOREMAN_MAX_QUEUE", "-1"),
        ("FOREMAN_OLLAMA_URL", "ftp://x"),
        ("FOREMAN_EMBED_MODEL", "a:b:c"),
    ],
)
def test_an_invalid_setting_stops_start_up_with_one_line(variable: str, value: str) -> None:
    result = foreman_command("serve", **{variable: value})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert variable in result.stderr


def test_help_lists_every_setting() -> None:
    from foreman.settings import OPTIONS

    result = foreman_command("serve", "--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert option.env in result.stdout and option.flag in result.stdout


def test_a_busy_listen_address_is_one_line_not_a_traceback() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        result = foreman_command(
            "serve", FOREMAN_LISTEN=address, FOREMAN_OLLAMA_URL="http://127.0.0.1:9"
        )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(f"foreman: cannot listen on {address}")
    assert "Traceback" not in result.stderr
