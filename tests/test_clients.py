"""Clients cannot hold what others need, nor get past foreman's framing (issue 16):
foreman under hypercorn, as a real process, driven through raw sockets."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import pytest

from .conftest import chat_body
from .processes import answering, free_port, standin, until


@contextmanager
def foreman_logged(
    target: str, data_dir: Path, *, preexec: Callable[[], None] | None = None, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """``foreman serve`` with its log in a file (``FOREMAN_LOG_LEVEL=info``); yields
    ``(url, process, log path)`` once it answers."""
    port = free_port()
    log = data_dir / "foreman.log"
    environ = {
        **os.environ,
        "FOREMAN_OLLAMA_URL": target,
        "FOREMAN_LISTEN": f"127.0.0.1:{port}",
        "FOREMAN_DATA_DIR": str(data_dir),
        "FOREMAN_LOG_LEVEL": "info",
        **env,
    }
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "foreman", "serve"],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            preexec_fn=preexec,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: answering(f"{url}/healthz") or proc.poll() is not None, what="foreman")
        assert proc.poll() is None, log.read_text()
        yield url, proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _connect(url: str, *, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    return sock


def _post_head(path: str, length: int | None, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(sock: socket.socket, seconds: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (or ``seconds`` pass)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


def _status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def _stats(target: str) -> dict:
    return httpx.get(f"{target}/_standin/stats").json()


# --- a client that stops reading -----------------------------------------------------------


def test_a_client_that_stops_reading_frees_the_gate_within_the_client_timeout(
    tmp_path: Path,
) -> None:
    timeout = 2.0
    with (
        standin("--reply-tokens", "1000000", "--token-rate", "100000") as target,
        foreman_logged(target, tmp_path, FOREMAN_CLIENT_TIMEOUT=str(timeout)) as (url, proc, log),
    ):
        stuck = _connect(url, rcvbuf=4096)
        body = json.dumps(chat_body(text="a long story")).encode()
        stuck.sendall(_post_head("/api/chat", len(body)) + body)  # and never reads
        until(lambda: _stats(target)["chats_in_flight"] == 1, what="the stuck chat running")
        time.sleep(1.0)  # its writes block long before this (100,000 lines a second)
        begun = time.monotonic()
        second = httpx.post(
            f"{url}/api/chat",
            json=chat_body(stream=False, options={"num_predict": 3}),
            timeout=timeout + 30,
        )
        waited = time.monotonic() - begun
        assert second.status_code == 200, second.text
        # Held, the stuck chat never ends (its writes block the stand-in too), and the
        # second would wait out its own timeout; a busy machine may add a few seconds.
        assert waited < timeout + 10, f"the second chat waited {waited:.2f}s"
        stats = _stats(target)
        assert stats["max_chats_in_flight"] == 1  # the gate held: never two at once
        assert stats["chats_in_flight"] == 0  # the stuck one's generation was aborted
        assert "FOREMAN_CLIENT_TIMEOUT" in log.read_text()
        stuck.close()
        assert proc.poll() is None


# --- bodies that never finish --------------------------------------------------------------


def test_a_body_that_does_not_arrive_in_time_is_408(tmp_path: Path) -> None:
    with (
        standin() as target,
        foreman_logged(target, tmp_path, FOREMAN_BODY_TIMEOUT="1.5") as (
            url,
            _,
            _,
        ),
    ):
        for head in (
            _post_head("/api/chat", 100),  # a Content-Length and no body
            _post_head("/api/chat", 100, "Expect: 100-continue"),
            _post_head("/jobs", 100),  # the control plane
        ):
            with _connect(url) as sock:
                begun = time.monotonic()
                sock.sendall(head)
                data = _answer(sock, 10)
            if data.startswith(b"HTTP/1.1 100 "):
                data = data.split(b"\r\n\r\n", 1)[1]
            assert _status(data) == 408, data
            assert b"connection: close" in data.lower()
            assert b"FOREMAN_BODY_TIMEOUT" in data
            assert 1.4 < time.monotonic() - begun < 8  # not early; late only on a busy machine

        body = json.dumps(chat_body()).encode()
        with _connect(url) as sock:  # 5 bytes a second: each one progress, the whole late
            sock.sendall(_post_head("/api/chat", len(body)))
            begun, answer = time.monotonic(), b""
            sock.setblocking(False)
            for byte in body:
                try:
                    sock.send(bytes([byte]))
                    answer += sock.recv(65536)
                except BlockingIOError:
                    pass
                if answer:
                    break
                time.sleep(0.2)
        assert _status(answer) == 408, answer
        assert 1.4 < time.monotonic() - begun < 8  # not early; late only on a busy machine
        assert _stats(target)["chats_total"] == 0


def test_a_refused_request_is_answered_without_waiting_for_its_body(tmp_path: Path) -> None:
    with (
        standin() as target,
        foreman_logged(target, tmp_path, FOREMAN_TOKEN="s3cret", FOREMAN_BODY_TIMEOUT="30") as (
            url,
            _,
            _,
        ),
    ):
        for path, status in (("/api/chat", 401), ("/nope", 401)):
            sock = _connect(url)
            begun = time.monotonic()
            sock.sendall(_post_head(path, 1_000_000))
            data = _answer(sock, 10)
            assert _status(data) == status, data
            sock.close()
            assert time.monotonic() - begun < 10  # the short drain, not FOREMAN_BODY_TIMEOUT (30 s)


def _at_most_1024_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_1100_body_less_connections_on_1024_descriptors_do_not_stop_new_clients(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4096:
        pytest.skip(f"the test itself needs more than 1,100 descriptors (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    body_timeout = 6.0  # long enough for 1,100 connections to spend every descriptor
    with (
        standin() as target,
        foreman_logged(
            target, tmp_path, preexec=_at_most_1024_fds, FOREMAN_BODY_TIMEOUT=str(body_timeout)
        ) as (url, proc, log),
    ):
        sockets = []
        try:
            for _ in range(1100):  # each sends a head announcing a body, and no body
                sock = socket.socket()
                sock.settimeout(0.2)
                try:
                    sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
                    sock.sendall(_post_head("/api/chat", 100))
                except OSError:
                    pass  # the backlog is full: it waits there, as a real client would
                sockets.append(sock)
            until(
                lambda: "cannot accept" in log.read_text(),
                seconds=body_timeout,
                what="foreman out of descriptors",
            )
            begun = time.monotonic()
            tags = httpx.get(f"{url}/api/tags", timeout=body_timeout + 10)
            waited = time.monotonic() - begun
            assert tags.status_code == 200
            assert waited < body_timeout + 8, f"/api/tags took {waited:.2f}s"
        finally:
            for sock in sockets:
                sock.close()
        assert proc.poll() is None
        accept_lines = [line for line in log.read_text().splitlines() if "cannot accept" in line]
        assert 1 <= len(accept_lines) <= 2, accept_lines  # one line per 10 s, no tracebacks
        assert "Traceback" not in log.read_text()


# --- framing and names -----------------------------------------------------------------------


def _exchange(url: str, raw: bytes, seconds: float = 5.0) -> tuple[bytes, bool]:
    """Send ``raw``; returns (what came back, whether the server closed the connection)."""
    with _connect(url) as sock:
        sock.sendall(raw)
        sock.settimeout(seconds)
        data, closed = b"", False
        try:
            while chunk := sock.recv(65536):
                data += chunk
            closed = True
        except TimeoutError:
            pass
    return data, closed


def _post(path: str, body: bytes) -> bytes:
    """A whole request that asks the server to close once it has answered."""
    return _post_head(path, len(body), "Connection: close") + body


def test_protocol_hygiene(tmp_path: Path) -> None:
    with standin() as target, foreman_logged(target, tmp_path) as (url, proc, log):
        data, _ = _exchange(
            url, b"GET /api/tags?a#b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 1
        )
        assert _status(data) == 400 and b"fragment" in data

        for bad in ("\n", "\r", "\x00", "\x01", "\x1b", "\x7f"):
            for path in ("/api/chat", "/api/generate", "/api/embed"):
                body = json.dumps({"model": f"llama3.2{bad}", "prompt": "x", "input": "x"})
                data, _ = _exchange(url, _post(path, body.encode()), 1)
                assert _status(data) == 400, data
                assert data.endswith(b'{"error":"invalid model name"}')
                assert b"x-foreman-backend" not in data.lower()
        stats = _stats(target)
        assert stats["chats_total"] == 0 and stats["embeds_total"] == 0  # never to the gate

        both = (
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        data, closed = _exchange(url, both)
        assert _status(data) == 400 and closed, data
        assert _stats(target)["chats_total"] == 0

        broken = (
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n"
        )
        data, closed = _exchange(url, broken)
        assert _status(data) == 400 and closed, data

        for body in (
            b"[" * 100_000 + b"]" * 100_000,  # too deep for any parser foreman would run
            b'{"endpoint":"chat","request":{"model":"llama3.2"},"metadata":{"a":"\\ud800"}}',
            b'{"endpoint":"chat","request":{"model":"llama3.2"},"metadata":{"a":"\xff"}}',
        ):
            for path in ("/jobs", "/admin/api/users", "/admin/api/backends"):
                data, _ = _exchange(url, _post(path, body), 1)
                assert _status(data) in (400, 422), data
                assert b'{"error":' in data
        assert "Traceback" not in log.read_text()
        # one record, one line: a model's \n is escaped in the access log, not a new line
        assert all(line.startswith("20") for line in log.read_text().splitlines())
        assert "model=llama3.2\\n" in log.read_text()
        assert proc.poll() is None


def test_a_forced_stop_logs_cut_requests_as_cancelled(tmp_path: Path) -> None:
    with (
        standin("--reply-tokens", "1000", "--token-rate", "20") as target,
        foreman_logged(target, tmp_path, FOREMAN_GRACE="30") as (url, proc, log),
    ):
        streaming = threading.Thread(
            target=lambda: _exchange(url, _post("/api/chat", json.dumps(chat_body()).encode()))
        )
        streaming.start()
        until(lambda: _stats(target)["chats_in_flight"] == 1, what="the chat streaming")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # again: no draining
        assert proc.wait(10) == 1
        streaming.join(10)
        lines = [line for line in log.read_text().splitlines() if "POST /api/chat" in line]
        assert len(lines) == 1 and "outcome=cancelled" in lines[0], lines


# --- memory while reading --------------------------------------------------------------------


def test_a_chunked_body_is_refused_as_soon_as_it_crosses_max_body(tmp_path: Path) -> None:
    with (
        standin() as target,
        foreman_logged(target, tmp_path, FOREMAN_MAX_BODY="1MiB") as (url, proc, _),
        _connect(url) as sock,
    ):
        sock.sendall(_post_head("/api/chat", None, "Transfer-Encoding: chunked"))
        piece = b"x" * 65536
        sent = 0
        sock.settimeout(0.05)
        answer = b""
        while not answer and sent < 64 << 20:  # a body that never ends, 64 KiB at a time
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        sock.settimeout(5)
        answer += _answer(sock, 5) if answer else b""
        assert _status(answer) == 413, answer[:200]
        assert sent < 8 << 20, f"{sent} bytes sent before the 413"  # not the whole body
        assert _stats(target)["chats_total"] == 0
        assert proc.poll() is None


def test_bodies_being_read_share_one_budget(tmp_path: Path) -> None:
    part = 15 << 20
    with (
        standin() as target,
        foreman_logged(target, tmp_path, FOREMAN_MAX_READING_BYTES="32MiB") as (url, proc, _),
    ):
        sockets = [_connect(url) for _ in range(3)]
        try:
            for sock in sockets:  # 15 MiB each of 20 MiB announced, then a pause
                sock.sendall(_post_head("/api/chat", 20 << 20))
                sock.settimeout(10)
                try:
                    sock.sendall(b"x" * part)
                except OSError:
                    pass  # refused already: foreman stopped reading
            answers = []
            for sock in sockets:
                sock.settimeout(0.5)
                try:
                    answers.append(sock.recv(65536))
                except TimeoutError:
                    answers.append(b"")
        finally:
            for sock in sockets:
                sock.close()
        refused = [a for a in answers if _status(a) == 503]
        assert len(refused) >= 1, answers
        assert b"retry-after: 1" in refused[0].lower()
        assert b"FOREMAN_MAX_READING_BYTES" in refused[0]
        assert answers[0] == b""  # the first one is still being read
        assert proc.poll() is None
        # once they are gone, the budget is whole again
        chat = httpx.post(f"{url}/api/chat", json=chat_body(stream=False), timeout=30)
        assert chat.status_code == 200


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_rss_returns_near_idle_after_large_bodies(tmp_path: Path) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("reads RSS from /proc")
    with standin() as target, foreman_logged(target, tmp_path) as (url, proc, _):
        assert httpx.get(f"{url}/api/tags").status_code == 200
        idle = _rss_mb(proc.pid)
        body = json.dumps(chat_body("nope", text="x" * (60 << 20))).encode()  # read, then 404
        statuses: list[int] = []

        def chat() -> None:
            statuses.append(httpx.post(f"{url}/api/chat", content=body, timeout=120).status_code)

        threads = [threading.Thread(target=chat) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [404] * 4
        time.sleep(1)  # the heap is trimmed once each request is over
        after = _rss_mb(proc.pid)
        assert after < idle + 40, f"RSS {idle:.1f} MB idle, {after:.1f} MB after 4 x 60 MiB"
