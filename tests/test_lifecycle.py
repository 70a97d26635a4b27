"""Lifecycle over real loopback sockets (default clock): graceful shutdown and start-up errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx2 as httpx
import pytest
import trio

from foreman import run
from foreman.standins.ollama import StandIn
from foreman.standins.ollama import serve as serve_standin

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
            assert waiter[0].headers["connection"] == "close"  # as Go's, once draining
            assert waiter[0].json()["error"] == "foreman is shutting down"
            assert waiter[0].headers["retry-after"] == "5"
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


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_listen_address_of_another_machine_fails_at_once_in_one_line(command: str) -> None:
    result = foreman_command(
        command, FOREMAN_LISTEN="192.0.2.1:8080", FOREMAN_OLLAMA_URL="http://127.0.0.1:9"
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "foreman: cannot listen on 192.0.2.1:8080: [Errno 99] Cannot assign requested address"
    ]


def test_a_busy_port_stops_the_demo_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        result = foreman_command("demo", "--listen", address)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(f"foreman: cannot listen on {address}")
    assert "Traceback" not in result.stderr


def test_demo_takes_only_the_options_it_uses() -> None:
    result = foreman_command("demo", "--help")
    assert "--listen" in result.stdout and "--token" in result.stdout
    assert "--ollama-url" not in result.stdout and "--poll-interval" not in result.stdout


def test_the_demo_prints_its_hints_once_it_listens_and_they_work(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "foreman",
            "demo",
            "--listen",
            f"127.0.0.1:{port}",
            "--token",
            "t0k",
            "--data-dir",
            str(tmp_path),  # never the user's own data directory
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stderr is not None
        hints = []
        for line in demo.stderr:
            hints.append(line)
            if line.startswith("Stop with Ctrl-C"):
                break
        # the very moment the hints are out, the curl they print must work (token included)
        assert '-H "Authorization: Bearer t0k"' in next(h for h in hints if "/api/tags" in h)
        response = httpx.get(
            f"http://127.0.0.1:{port}/api/tags", headers={"Authorization": "Bearer t0k"}
        )
        assert response.status_code == 200 and "llama3.2" in response.text
    finally:
        demo.send_signal(signal.SIGTERM)
        rest = demo.communicate(timeout=20)[1]
    assert demo.returncode == 0
    said = "".join(hints) + rest  # one line says where foreman listens, not hypercorn's too
    assert said.count(f"serving on http://127.0.0.1:{port}") == 1, said
    assert f"Running on http://127.0.0.1:{port}" not in said, said


def test_version_comes_from_one_place() -> None:
    import foreman

    result = foreman_command("--version")
    assert result.stdout.strip() == f"foreman, version {foreman.__version__}"


async def test_status_lines_carry_reason_phrases_as_ollama_sends_them() -> None:
    async def status_line(url: str, request: bytes) -> bytes:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(request)
            received = b""
            while b"\r\n" not in received:
                received += await stream.receive_some()
        return received.split(b"\r\n", 1)[0]

    get = b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    missing = b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 16\r\n\r\n"
    with trio.fail_after(15):
        async with real_foreman(StandIn()) as (url, shutdown, stopped):
            assert await status_line(url, get) == b"HTTP/1.1 200 OK"
            assert await status_line(url, missing + b'{"model":"nope"}') == (
                b"HTTP/1.1 404 Not Found"
            )
            shutdown.set()
            await stopped.wait()
