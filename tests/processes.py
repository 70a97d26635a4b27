"""foreman and its stand-ins as real processes, for the tests that need them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(condition: Callable[[], Any], seconds: float = 30.0, what: str = "") -> Any:
    """Poll ``condition`` every 20 ms until it is truthy; returns its value."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.02)
    return value


@contextmanager
def process(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m foreman ARGS``, killed on exit if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "foreman", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def answering(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


@contextmanager
def standin(*args: str) -> Iterator[str]:
    """``foreman standin ARGS`` on a free port, once it answers; yields its URL."""
    url = f"http://127.0.0.1:{free_port()}"
    with process("standin", "--listen", url[7:], "--log-level", "warning", *args):
        probe = "/v1/models" if "--api" in args else "/api/version"
        until(lambda: answering(f"{url}{probe}"), what="the stand-in")
        yield url


@contextmanager
def foreman(
    target: str, data_dir: Path, *, port: int | None = None, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``foreman serve`` in front of ``target`` (on ``port``, else a free one), once it
    is ready; ``env`` adds settings (``FOREMAN_TOKEN="..."``)."""
    url = f"http://127.0.0.1:{port or free_port()}"
    env = {
        "FOREMAN_OLLAMA_URL": target,
        "FOREMAN_LISTEN": url[7:],
        "FOREMAN_DATA_DIR": str(data_dir),
        "FOREMAN_LOG_LEVEL": "warning",
        **env,
    }
    with process("serve", env=env) as proc:
        until(lambda: answering(f"{url}/readyz"), what="foreman")
        yield url, proc
