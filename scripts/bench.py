#!/usr/bin/env python3
"""Benchmark: foreman side by side with direct access, nginx and a minimal trio relay.

Every front is a real process on 127.0.0.1, in front of the same fake Ollama
(``scripts/bench_target.py``, trio + h11, answering at once), and of a second one whose
embeds take 5 ms. The fronts:

* ``direct``: the target itself, no front at all;
* ``nginx``: when the ``nginx`` binary is installed; one worker, ``proxy_buffering off``,
  ``proxy_http_version 1.1``, upstream keep-alive;
* ``floor``: ``scripts/floor_relay.py``, a minimal trio + h11 relay: the least a trio
  relay can cost;
* ``stack``: ``scripts/stack_relay.py``, a minimal relay on foreman's own stack (hypercorn,
  a raw ASGI app, one ``httpx2.AsyncClient``): foreman's own cost is the difference to it;
* ``foreman``: ``python -m foreman serve``, logs at ``warning``, a temporary data dir;
* ``v1`` (``--v1 PATH``): foreman as of an older checkout (a git worktree), run the same way.

Measured per front, each cell the best of ``--rounds`` rounds (fronts interleaved):
``GET /api/tags`` and ``"stream": false`` chat p50/p99 (one keep-alive connection, one
request at a time); a 20-line NDJSON chat stream: time to its first line (TTFL) and to
its end, p50; embed throughput at 32 connections for ``--duration`` seconds (``wrk``, or
a trio loop without it), against both targets; embed latency p50 against the 5 ms
target, alone and while a long chat streams through the same front; and, for foreman,
its RSS idle and with 1,000 streaming chats waiting at the gate. The measuring client is
the same for every front: a raw-socket HTTP/1.1 client (wrk for throughput).

Prints one markdown table, the time each front adds over direct, and the data plane's goals
(against the stack floor, issue 17) with PASS/MISS. ``--profile FILE`` also records foreman
under the embed load with py-spy and summarises where its time goes. Exit status 0 unless a
front misbehaves (an error status, a short stream); a MISS is a result, not a failure.

Usage: python scripts/bench.py [--quick] [--requests 300] [--duration 5] [--rounds 3]
       [--v1 /tmp/foreman-v1] [--profile FILE] [--json FILE]
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from _procs import free_port, rss_mb, wait_http

SCRIPTS = Path(__file__).resolve().parent
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "why is the sky blue?"}]}
EMBED = json.dumps({"model": "nomic-embed-text", "input": "why is the sky blue?"}).encode()
STREAM_LINES = 20  # 19 content lines and the final done line
LONG_STREAM_LINE_DELAY = 0.005  # the long chat beside the embeds: 200 lines/s
WAITING_LINE_DELAY = 0.5  # the chat holding the gate while 1,000 wait
EMBED_DELAY = 0.005


def body(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def chat_body(*, stream: bool, lines: int = STREAM_LINES, line_delay: float = 0) -> bytes:
    options: dict[str, Any] = {"num_predict": lines - 1}
    if line_delay:
        options["bench_line_delay"] = line_delay
    return body({**CHAT, "stream": stream, "options": options})


# --- the measuring client ------------------------------------------------------------------


class BadAnswer(Exception):
    """A front answered with an error status or a broken body."""


class ResponseReader:
    """A sans-IO parser of one HTTP/1.1 response (Content-Length or chunked).

    Notes when the first complete body line (``\\n``) arrives, and counts the lines.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.status = 0
        self.first_line: float | None = None
        self.lines = 0
        self.size = 0
        self.closes = False  # the front closes the connection after this response
        self._state = "head"
        self._left = 0

    def feed(self, data: bytes) -> bool:
        """Add bytes read from the socket; True once the response is complete."""
        buffer = self.buffer
        buffer += data
        while True:
            if self._state == "head":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return False
                head = bytes(buffer[:end]).split(b"\r\n")
                del buffer[: end + 4]
                self.status = int(head[0].split(b" ", 2)[1])
                fields = dict(line.split(b":", 1) for line in head[1:])
                fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
                self.closes = fields.get(b"connection", b"").lower() == b"close"
                if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                    self._state = "size"
                else:
                    self._state, self._left = "fixed", int(fields.get(b"content-length", b"0"))
            elif self._state == "fixed":
                if len(buffer) < self._left:
                    return False
                self._body(bytes(buffer[: self._left]))
                del buffer[: self._left]
                return True
            elif self._state == "size":
                end = buffer.find(b"\r\n")
                if end < 0:
                    return False
                self._left = int(bytes(buffer[:end]).split(b";")[0], 16)
                del buffer[: end + 2]
                self._state = "chunk" if self._left else "trailer"
            elif self._state == "chunk":
                if len(buffer) < self._left + 2:
                    return False
                self._body(bytes(buffer[: self._left]))
                del buffer[: self._left + 2]
                self._state = "size"
            else:  # trailer: none expected, up to the empty line
                end = buffer.find(b"\r\n")
                if end < 0:
                    return False
                del buffer[: end + 2]
                if end == 0:
                    return True

    def _body(self, chunk: bytes) -> None:
        newlines = chunk.count(b"\n")
        if newlines and self.first_line is None:
            self.first_line = time.perf_counter()
        self.lines += newlines
        self.size += len(chunk)


def request_bytes(method: str, path: str, port: int, content: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if content or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n"
    return head.encode() + b"\r\n" + content


@dataclass
class Answer:
    status: int
    ttfl: float  # seconds to the first complete body line (0: none)
    total: float  # seconds to the last byte
    lines: int


class Client:
    """One keep-alive HTTP/1.1 connection on a blocking socket: the lightest client.

    A connection the front closes between requests (v1's hypercorn does after 1,000) is
    replaced, and the request sent again on the new one.
    """

    def __init__(self, url: str) -> None:
        self.port = int(url.rsplit(":", 1)[1])
        self.sock = self._connect()
        self.used = False

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        self.sock.close()

    def send(self, method: str, path: str, content: bytes = b"") -> ResponseReader:
        self.sock.sendall(request_bytes(method, path, self.port, content))
        return ResponseReader()

    def request(self, method: str, path: str, content: bytes = b"") -> Answer:
        start = time.perf_counter()
        reader = self.send(method, path, content)
        try:
            while not reader.feed(self.recv()):
                pass
        except (BadAnswer, ConnectionResetError):
            if not self.used or reader.status:
                raise
            self.sock.close()
            self.sock, self.used = self._connect(), False
            return self.request(method, path, content)
        total = time.perf_counter() - start
        self.used = True
        if reader.closes:
            self.sock.close()
            self.sock, self.used = self._connect(), False
        ttfl = reader.first_line - start if reader.first_line else 0.0
        if reader.status != 200:
            raise BadAnswer(f"{method} {path}: status {reader.status}")
        return Answer(reader.status, ttfl, total, reader.lines)

    def recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise BadAnswer("connection closed by the front")
        return data


def percentile(values: list[float], fraction: float) -> float:
    """The value ``fraction`` of the way up (the median for 0.5, by ``statistics``)."""
    if fraction == 0.5:
        return statistics.median(values)
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def latencies(url: str, count: int, method: str, path: str, content: bytes = b"") -> list[Answer]:
    """``count`` requests one after the other on one connection (after 20 to warm up)."""
    client = Client(url)
    try:
        for _ in range(20):
            client.request(method, path, content)
        return [client.request(method, path, content) for _ in range(count)]
    finally:
        client.close()


def warm_up(url: str) -> None:
    """A few requests of every kind, so that the front has run all its code once."""
    latencies(url, 0, "GET", "/api/tags")
    latencies(url, 0, "POST", "/api/chat", chat_body(stream=False))
    latencies(url, 0, "POST", "/api/chat", chat_body(stream=True))
    latencies(url, 0, "POST", "/api/embed", EMBED)


# --- throughput: wrk, or a trio loop --------------------------------------------------------

WRK_LUA = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


def embed_throughput(url: str, seconds: float, connections: int, workdir: Path) -> float:
    """Embeds per second at ``connections`` keep-alive connections for ``seconds``."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return trio.run(trio_load, url, seconds, connections)
    script = workdir / "embed.lua"
    script.write_text(WRK_LUA.format(body=EMBED.decode()))
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script)]
    out = subprocess.run(
        [*command, f"{url}/api/embed"], capture_output=True, text=True, timeout=seconds + 60
    ).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or (errors and re.search(r"[1-9]", errors[1])):
        raise BadAnswer(f"wrk against {url}: {bad[0] if bad else errors[0]}")  # type: ignore[index]
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise BadAnswer(f"wrk printed no rate: {out!r}")
    return float(rate[1])


async def trio_load(url: str, seconds: float, connections: int) -> float:
    """The fallback without wrk: ``connections`` tasks, one keep-alive connection each."""
    port = int(url.rsplit(":", 1)[1])
    payload = request_bytes("POST", "/api/embed", port, EMBED)
    done = 0
    deadline = trio.current_time() + seconds

    async def loop() -> None:
        nonlocal done
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            while trio.current_time() < deadline:
                await stream.send_all(payload)
                reader = ResponseReader()
                while not reader.feed(await stream.receive_some(65536)):
                    pass
                if reader.status != 200:
                    raise BadAnswer(f"POST /api/embed: status {reader.status}")
                done += 1

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(loop)
    return done / (trio.current_time() - start)


def embeds_beside_stream(url: str, count: int) -> list[float]:
    """Embed latencies, one at a time, while one long chat streams through the same front."""
    started, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def stream() -> None:
        client = Client(url)
        try:
            content = chat_body(stream=True, lines=1_000_000, line_delay=LONG_STREAM_LINE_DELAY)
            reader = client.send("POST", "/api/chat", content)
            while not stop.is_set():
                if reader.feed(client.recv()):
                    raise BadAnswer("the long chat ended early")
                if reader.first_line:
                    started.set()
        except BaseException as exc:  # noqa: BLE001 (reported by the caller)
            failure.append(exc)
            started.set()
        finally:
            client.close()

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        if not started.wait(30) or failure:
            raise BadAnswer(f"the long chat did not start: {failure}")
        times = [a.total for a in latencies(url, count, "POST", "/api/embed", EMBED)]
        if failure:
            raise BadAnswer(f"the long chat failed: {failure[0]!r}")
        return times
    finally:
        stop.set()
        thread.join(10)


# --- processes ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the benchmark dies (Linux), so nothing is left running."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Child processes, each terminated (then killed) when the benchmark ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, command: list[str], *, env: dict[str, str] | None = None, cwd: Any = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed with the child)
        proc = subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        self.children.append(proc)
        return proc

    def log_tail(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop_all(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.children):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Front:
    """One front in front of one target: its URL and the process to read RSS from."""

    name: str
    url: str
    pid: int | None = None
    health: str | None = None  # foreman's /healthz, for the gate's waiting count


def start_target(procs: Processes, name: str, embed_delay: float) -> tuple[str, int]:
    """A ``bench_target.py``; returns its URL and process id."""
    port = free_port()
    command = [sys.executable, str(SCRIPTS / "bench_target.py"), "--listen", f"127.0.0.1:{port}"]
    proc = procs.start(name, [*command, "--embed-delay", str(embed_delay)])
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/api/version")
    return url, proc.pid


NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream target {{
        server {target};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://target;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def start_front(
    procs: Processes, kind: str, target: str, target_pid: int, tag: str, args: argparse.Namespace
) -> Front:
    """Start front ``kind`` before ``target``; returns once it answers."""
    if kind == "direct":
        return Front(kind, target, target_pid)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    name = f"{kind}-{tag}"
    if kind in ("floor", "stack"):
        script = "floor_relay.py" if kind == "floor" else "stack_relay.py"
        command = [sys.executable, str(SCRIPTS / script), "--listen"]
        proc = procs.start(name, [*command, f"127.0.0.1:{port}", "--target", target])
        wait_http(f"{url}/api/version")
        return Front(kind, url, proc.pid)
    if kind == "nginx":
        directory = procs.workdir / name
        directory.mkdir()
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=directory, target=target[7:], port=port))
        binary = nginx_binary()
        assert binary is not None
        procs.start(name, [binary, "-p", str(directory), "-c", str(conf), "-e", "stderr"])
        wait_http(f"{url}/api/version")
        return Front(kind, url)
    # foreman, now or as of an older checkout
    data_dir = procs.workdir / f"{name}-data"
    env = {
        "FOREMAN_OLLAMA_URL": target,
        "FOREMAN_LISTEN": f"127.0.0.1:{port}",
        "FOREMAN_DATA_DIR": str(data_dir),
        "FOREMAN_LOG_LEVEL": "warning",
        "FOREMAN_MAX_QUEUE": str(args.waiting * 2),
        "FOREMAN_GRACE": "2",  # an interrupted benchmark stops at once
    }
    cwd = None
    if kind == "v1":
        env["PYTHONPATH"] = cwd = str(args.v1)
    proc = procs.start(name, [sys.executable, "-m", "foreman", "serve"], env=env, cwd=cwd)
    try:
        wait_http(f"{url}/readyz")
    except OSError:
        raise SystemExit(f"{name} did not start:\n{procs.log_tail(name)}") from None
    return Front(kind, url, proc.pid, f"{url}/healthz")


# --- measuring ------------------------------------------------------------------------------

#: Columns: key, heading, unit, better ("low" or "high").
COLUMNS = [
    ("tags_p50", "tags p50", "ms", "low"),
    ("tags_p99", "tags p99", "ms", "low"),
    ("chat_p50", "chat p50", "ms", "low"),
    ("chat_p99", "chat p99", "ms", "low"),
    ("ttfl_p50", "20-line stream: first line p50", "ms", "low"),
    ("stream_p50", "20-line stream: total p50", "ms", "low"),
    ("embed_c32", "embed c32", "/s", "high"),
    ("embed_c32_5ms", "embed c32, 5 ms target", "/s", "high"),
    ("embed_5ms_p50", "embed p50, 5 ms target", "ms", "low"),
    ("embed_beside_stream_p50", "embed p50 beside a stream, 5 ms target", "ms", "low"),
    ("rss_idle", "RSS idle", "MB", "low"),
    ("rss_waiting", "RSS, 1,000 waiting", "MB", "low"),
]


def measure(pair: tuple[Front, Front], args: argparse.Namespace, workdir: Path) -> dict:
    """One round of every measure for one front (``pair``: before the 0 ms and 5 ms targets)."""
    front, front5 = pair
    n, result = args.requests, {}
    ms = 1000.0
    tags = [a.total for a in latencies(front.url, n, "GET", "/api/tags")]
    result["tags_p50"], result["tags_p99"] = ms * percentile(tags, 0.5), ms * percentile(tags, 0.99)
    chats = [a.total for a in latencies(front.url, n, "POST", "/api/chat", chat_body(stream=False))]
    result["chat_p50"], result["chat_p99"] = (
        ms * percentile(chats, 0.5),
        ms * percentile(chats, 0.99),
    )
    streams = latencies(front.url, n, "POST", "/api/chat", chat_body(stream=True))
    short = [a.lines for a in streams if a.lines != STREAM_LINES]
    if short:
        raise BadAnswer(f"{front.name}: streams of {short[0]} lines, not {STREAM_LINES}")
    result["ttfl_p50"] = ms * statistics.median(a.ttfl for a in streams)
    result["stream_p50"] = ms * statistics.median(a.total for a in streams)
    result["embed_c32"] = embed_throughput(front.url, args.duration, 32, workdir)
    result["embed_c32_5ms"] = embed_throughput(front5.url, args.duration, 32, workdir)
    alone = [a.total for a in latencies(front5.url, max(50, n // 2), "POST", "/api/embed", EMBED)]
    result["embed_5ms_p50"] = ms * statistics.median(alone)
    beside = embeds_beside_stream(front5.url, max(50, n // 2))
    result["embed_beside_stream_p50"] = ms * statistics.median(beside)
    return result


def gate_waiting(health: str) -> tuple[int, int]:
    with urllib.request.urlopen(health, timeout=10) as response:
        chats = json.load(response)["chats"]
    return chats["in_flight"], chats["waiting"]


def rss_with_waiting(front: Front, count: int) -> tuple[float, int]:
    """foreman's RSS with ``count`` streaming chats open at once (one runs, the rest wait)."""
    assert front.pid is not None and front.health is not None
    port = int(front.url.rsplit(":", 1)[1])
    slow = chat_body(stream=True, lines=1_000_000, line_delay=WAITING_LINE_DELAY)
    payload = request_bytes("POST", "/api/chat", port, slow)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(payload)
            sockets.append(sock)
        deadline = time.monotonic() + 60
        while gate_waiting(front.health) != (1, count - 1) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        in_flight, waiting = gate_waiting(front.health)
        return rss_mb(front.pid), in_flight + waiting
    finally:
        for sock in sockets:
            sock.close()
        deadline = time.monotonic() + 30
        while gate_waiting(front.health) != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.2)


def best(rounds: list[dict]) -> dict:
    merged: dict[str, float] = {}
    for key, _, _, better in COLUMNS:
        values = [r[key] for r in rounds if key in r]
        if values:
            merged[key] = min(values) if better == "low" else max(values)
    return merged


# --- goals ----------------------------------------------------------------------------------


@dataclass
class Goal:
    text: str
    value: str
    bound: str
    ok: bool | None  # None: cannot be judged (a front is missing)


def goals(results: dict[str, dict], name: str, waiting: int) -> list[Goal]:
    """The data plane's goals for front ``name`` (issue 17): against the stack floor (a relay
    on hypercorn + httpx2) and direct, from the same run."""
    me, stack, direct = results[name], results.get("stack"), results.get("direct")
    out: list[Goal] = []

    def added(text: str, key: str, slack: float) -> None:
        if stack is None:
            out.append(Goal(text, "", "", None))
            return
        mine = me[key] - stack[key]
        out.append(Goal(text, f"+{mine:.2f} ms", f"<= +{slack:.2f} ms", mine <= slack))

    if stack is not None:
        ratio = me["embed_c32"] / stack["embed_c32"]
        out.append(Goal("embed c32 vs the stack floor", f"{ratio:.2f}x", ">= 0.90x", ratio >= 0.9))
    added("tags p50 over the stack floor", "tags_p50", 0.3)
    added("chat p50 over the stack floor", "chat_p50", 0.5)
    added("20-line stream p50 over the stack floor", "stream_p50", 0.5)
    added("time to first line p50 over the stack floor", "ttfl_p50", 0.5)
    if direct is not None:
        ratio = me["embed_beside_stream_p50"] / direct["embed_beside_stream_p50"]
        out.append(
            Goal(
                "embed p50 beside a stream vs direct, 5 ms target",
                f"{ratio:.2f}x",
                "<= 1.40x",
                ratio <= 1.4,
            )
        )
    if "rss_idle" in me:
        idle = me["rss_idle"]
        out.append(Goal("RSS idle", f"{idle:.1f} MB", "< 60 MB", idle < 60))
    if "rss_waiting" in me:
        rss = me["rss_waiting"]
        out.append(
            Goal(f"RSS with {waiting:,} chats at the gate", f"{rss:.1f} MB", "< 150 MB", rss < 150)
        )
    return out


# --- profile --------------------------------------------------------------------------------

#: Where a frame's file lives -> the layer it belongs to (first match wins).
LAYERS = [
    ("foreman/cli.py", "entry"),  # trio.run: what runs below it without an owner is trio's
    ("foreman/__main__.py", "entry"),
    ("foreman/", "foreman"),
    ("hypercorn/", "hypercorn"),
    ("h11/", "h11"),
    ("httpcore2/", "httpcore2"),
    ("httpcore/", "httpcore2"),  # v1's httpx
    ("httpx2/", "httpx2"),
    ("httpx/", "httpx2"),
    ("trio_util/", "trio"),
    ("trio/", "trio"),
    ("outcome/", "trio"),
    ("prometheus_client/", "prometheus_client"),
    ("quart", "quart"),
    ("werkzeug/", "quart"),
]
#: The layers that own the work done below them (trio's and the standard library's).
OWNERS = {
    "foreman": "foreman's own code",
    "prometheus_client": "foreman's metrics (prometheus_client)",
    "hypercorn": "server: hypercorn + h11",
    "quart": "server: quart",
    "httpx2": "client: httpx2 (its Request/Response; with httpcore2, its pool)",
    "httpcore2": "client: httpx2 (its Request/Response; with httpcore2, its pool)",
}
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def layer_of(frame: str) -> str:
    match = _FRAME.match(frame)
    path = match["file"] if match else frame
    for marker, layer in LAYERS:
        if marker in path:
            return layer
    return "stdlib" if match else "other"


def summarise_profile(raw: str) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks, summarised three ways.

    * ``by_owner``: each sample goes to the innermost layer that owns it: foreman's code,
      its metrics, the server (hypercorn, with its h11), the client (httpx2/httpcore2, with
      theirs); the trio and standard-library work a layer asks for counts as that layer's.
      A sample with no owner is trio's scheduler (or ``other``);
    * ``self_by_package``: where the leaf frame's code lives;
    * ``foreman_inclusive``: foreman's functions with everything they call.
    """
    by_owner: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), stack.split(";")
        layers = [layer_of(frame) for frame in frames]
        total += count
        by_package[layers[-1]] += count
        owner = next((OWNERS[x] for x in reversed(layers) if x in OWNERS), None)
        if owner is None:
            owner = "trio's scheduler" if "trio" in layers else "other"
        by_owner[owner] += count
        seen = set()
        for frame, layer in zip(frames, layers, strict=True):
            match = _FRAME.match(frame)
            if (
                layer == "foreman"
                and match
                and not match["file"].endswith(("cli.py", "__main__.py"))
            ):
                name = f"{match['func']} ({match['file'].rsplit('foreman/', 1)[-1]})"
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += count

    def shares(counter: Counter[str], top: int) -> dict[str, float]:
        return {k: round(100 * v / max(total, 1), 1) for k, v in counter.most_common(top)}

    return {
        "samples": total,
        "by_owner": shares(by_owner, 20),
        "self_by_package": shares(by_package, 20),
        "foreman_inclusive": shares(inclusive, 25),
    }


def profile(front: Front, args: argparse.Namespace, workdir: Path) -> dict[str, Any] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(spy, os.X_OK):
        print("no py-spy (pip install py-spy): no profile", file=sys.stderr)
        return None
    assert front.pid is not None
    raw = Path(args.profile)
    seconds = max(1, round(args.profile_seconds))  # py-spy takes whole seconds
    command = [spy, "record", "-p", str(front.pid), "-d", str(seconds), "-f", "raw", "-o", str(raw)]
    spying = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    rate = embed_throughput(front.url, seconds + 1, 32, workdir)
    _, err = spying.communicate(timeout=seconds + 60)
    if spying.returncode != 0 or not raw.exists():
        print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        return None
    summary = summarise_profile(raw.read_text())
    summary["embed_c32_while_profiled"] = rate
    summary["seconds"] = seconds
    return summary


# --- output ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next(
            (ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), model
        )
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "system": platform.platform(),
        "load_before": os.getloadavg(),
    }


def cell(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "/s":
        return f"{value:,.0f}"
    return f"{value:.1f}" if unit == "MB" else f"{value:.2f}"


def print_report(
    results: dict[str, dict],
    report_goals: dict[str, list[Goal]],
    args: argparse.Namespace,
    profile_summary: dict | None,
) -> None:
    titles = {"rss_waiting": f"RSS, {args.waiting:,} waiting"}
    heading = " | ".join(f"{titles.get(k, title)} ({unit})" for k, title, unit, _ in COLUMNS)
    print(f"\n| front | {heading} |")
    print("|---|" + "---:|" * len(COLUMNS))
    for name, values in results.items():
        cells = " | ".join(cell(values.get(key), unit) for key, _, unit, _ in COLUMNS)
        print(f"| {name} | {cells} |")
    direct = results.get("direct")
    if direct is not None:
        keys = [c for c in COLUMNS if c[2] == "ms"]
        print("\nAdded over direct (ms):\n")
        print("| front | " + " | ".join(title for _, title, _, _ in keys) + " |")
        print("|---|" + "---:|" * len(keys))
        for name, values in results.items():
            if name != "direct":
                cells = " | ".join(f"{values[k] - direct[k]:+.2f}" for k, _, _, _ in keys)
                print(f"| {name} | {cells} |")
    for name, entries in report_goals.items():
        print(f"\nThe data plane's goals, {name}:\n")
        print("| goal | value | bound | |")
        print("|---|---:|---:|---|")
        for goal in entries:
            verdict = "n/a" if goal.ok is None else ("PASS" if goal.ok else "MISS")
            print(f"| {goal.text} | {goal.value} | {goal.bound} | {verdict} |")
    if profile_summary:
        print(
            f"\nforeman under embed c32, py-spy, {profile_summary['samples']} samples "
            f"({profile_summary['embed_c32_while_profiled']:,.0f}/s while profiled):\n"
        )
        for title, key in (
            ("owner (with the trio and stdlib work it asks for)", "by_owner"),
            ("leaf frame's package", "self_by_package"),
            ("foreman's functions, inclusive", "foreman_inclusive"),
        ):
            print(f"| {title} | % |\n|---|---:|")
            for name, share in profile_summary[key].items():
                print(f"| {name} | {share} |")
            print()


# --- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\nUsage:")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The v1 front: git worktree add /tmp/foreman-v1 81a853c, then --v1 /tmp/foreman-v1.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke check: 50 requests, 1 s loads, one round"
    )
    parser.add_argument(
        "--requests", type=int, default=300, metavar="N", help="per latency measure (300)"
    )
    parser.add_argument(
        "--duration", type=float, default=5, metavar="S", help="seconds per throughput load (5)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, metavar="R", help="rounds, each cell the best (3)"
    )
    parser.add_argument(
        "--waiting", type=int, default=1000, metavar="N", help="chats at foreman's gate (1000)"
    )
    parser.add_argument(
        "--fronts",
        default="direct,nginx,floor,stack,foreman",
        metavar="LIST",
        help="comma-separated, in table order (direct,nginx,floor,stack,foreman)",
    )
    parser.add_argument("--v1", type=Path, metavar="PATH", help="also foreman from this checkout")
    parser.add_argument(
        "--profile", metavar="FILE", help="record foreman under embed c32 with py-spy, raw, here"
    )
    parser.add_argument(
        "--profile-seconds", type=int, default=10, metavar="S", help="seconds to profile (10)"
    )
    parser.add_argument("--json", metavar="FILE", help="write every number here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.duration, args.rounds = min(args.requests, 50), 1.0, 1
    args.fronts = [f.strip() for f in args.fronts.split(",") if f.strip()]
    if args.v1 is not None:
        if not (args.v1 / "foreman" / "__init__.py").exists():
            parser.error(f"--v1 {args.v1}: no foreman package there")
        args.v1 = args.v1.resolve()
        args.fronts.append("v1")
    if "nginx" in args.fronts and nginx_binary() is None:
        print("nginx is not installed: no nginx column", file=sys.stderr)
        args.fronts.remove("nginx")
    unknown = set(args.fronts) - {"direct", "nginx", "floor", "stack", "foreman", "v1"}
    if unknown:
        parser.error(f"unknown fronts: {', '.join(sorted(unknown))}")
    return args


def main() -> int:
    args = parse_args()
    # a SIGTERM ends the benchmark as Ctrl-C does: through the finally that stops the children
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine()
    print(
        f"{info['cpus']} CPUs ({info['cpu']}), Python {info['python']}; "
        f"{args.requests} requests per latency, {args.duration:g} s per throughput, "
        f"{args.rounds} round(s); load {info['load_before'][0]:.2f}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="foreman-bench-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            return run(args, procs, workdir, info)
        finally:
            procs.stop_all()


def run(args: argparse.Namespace, procs: Processes, workdir: Path, info: dict) -> int:
    target, target_pid = start_target(procs, "target", 0.0)
    target5, target5_pid = start_target(procs, "target-5ms", EMBED_DELAY)
    pairs: dict[str, tuple[Front, Front]] = {}
    for kind in args.fronts:
        pairs[kind] = (
            start_front(procs, kind, target, target_pid, "0ms", args),
            start_front(procs, kind, target5, target5_pid, "5ms", args),
        )
    rounds: dict[str, list[dict]] = {kind: [] for kind in pairs}
    idle: dict[str, float] = {}
    for number in range(1, args.rounds + 1):
        for kind, pair in pairs.items():
            print(f"round {number}/{args.rounds}: {kind}", file=sys.stderr, flush=True)
            if kind in ("floor", "stack", "foreman", "v1") and kind not in idle:
                warm_up(pair[0].url)
                time.sleep(0.5)
                assert pair[0].pid is not None
                idle[kind] = rss_mb(pair[0].pid)
            rounds[kind].append(measure(pair, args, workdir))
    results = {kind: best(r) for kind, r in rounds.items()}
    for kind, rss in idle.items():
        results[kind]["rss_idle"] = rss
    profile_summary = None
    if args.profile and "foreman" in pairs:
        print("profiling foreman under embed c32", file=sys.stderr, flush=True)
        profile_summary = profile(pairs["foreman"][0], args, workdir)
    for kind in ("foreman", "v1"):
        if kind in pairs and args.waiting:
            print(f"{kind}: {args.waiting:,} chats at the gate", file=sys.stderr, flush=True)
            rss, held = rss_with_waiting(pairs[kind][0], args.waiting)
            if held < args.waiting:
                print(f"{kind}: only {held} chats reached the gate", file=sys.stderr)
            results[kind]["rss_waiting"] = rss
    report_goals = {k: goals(results, k, args.waiting) for k in ("foreman", "v1") if k in results}
    info["load_after"] = os.getloadavg()
    print(
        f"\n{info['cpus']} CPUs ({info['cpu']}), Python {info['python']}; {args.requests} "
        f"requests per latency, {args.duration:g} s per load, best of {args.rounds} round(s); "
        f"load average {info['load_before'][0]:.2f} before, {info['load_after'][0]:.2f} after"
    )
    print_report(results, report_goals, args, profile_summary)
    if args.json:
        document = {
            "machine": info,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rounds": rounds,
            "best": results,
            "goals": {k: [vars(g) for g in v] for k, v in report_goals.items()},
            "profile": profile_summary,
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BadAnswer as exc:
        print(f"bench: a front misbehaved: {exc}", file=sys.stderr)
        sys.exit(1)
