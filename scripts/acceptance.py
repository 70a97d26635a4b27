#!/usr/bin/env python3
"""Acceptance: the official ``ollama`` Python client against foreman, all real processes.

Starts the stand-in target (``foreman standin``) and foreman (``foreman serve``)
on free loopback ports, drives foreman with ``ollama.Client`` — chat (streamed
and not), generate, embed, embeddings, list, ps, show — first without and then
with ``FOREMAN_TOKEN``, checks every answer, checks at the stand-in that
concurrent chats never overlapped while embeds did, and that SIGTERM stops
foreman with exit status 0. With the token it also submits a batch job to
``/jobs``, waits for its signed state webhooks and checks its artifacts, and
adds a second Ollama stand-in and a Claude stand-in through ``/admin/api/backends``,
chats through aliases and falls back to Claude when the Ollama stand-in stops. Then
the abuse and outage checks: odd path spellings and non-ASCII headers over a
raw socket, ``Connection: close`` and HTTP/1.0 clients, a target frozen with
``SIGSTOP`` and thawed with ``SIGCONT``, and a forced second signal (exit
status 1).

Usage: python scripts/acceptance.py   (exit status 0 when every check passed)
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import ollama
from _procs import foreman_process, free_port, wait_http

CHAT_MODEL = "llama3.2"
EMBED_MODEL = "nomic-embed-text"
CHECKS: list[str] = []


def check(condition: object, what: str) -> None:
    if not condition:
        raise AssertionError(f"FAILED: {what}")
    CHECKS.append(what)
    print(f"ok  {what}", flush=True)


def stand_in_stats(target: str) -> dict:
    with urllib.request.urlopen(f"{target}/_standin/stats", timeout=5) as response:
        return json.load(response)


def drive(client: ollama.Client, target: str) -> None:
    """Every call a client makes, with its answer checked."""
    models = [m.model for m in client.list().models]
    check(
        f"{CHAT_MODEL}:latest" in models and f"{EMBED_MODEL}:latest" in models,
        f"list() shows the target's models: {models}",
    )

    answer = client.chat(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "why is the sky blue?"}]
    )
    check(
        answer.done and answer.message.role == "assistant" and answer.message.content,
        f"chat() answers: {answer.message.content!r}",
    )
    check(answer.model == CHAT_MODEL, "chat() echoes the model name as sent")

    parts = list(
        client.chat(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    check(
        len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1]),
        f"chat(stream=True) yields {len(parts)} chunks, the last one done",
    )
    check(
        parts[-1].done_reason == "stop" and parts[-1].eval_count,
        "the last chunk has done_reason and eval_count",
    )

    generated = client.generate(model=CHAT_MODEL, prompt="say hi")
    check(generated.done and generated.response, f"generate() answers: {generated.response!r}")
    streamed = list(client.generate(model=CHAT_MODEL, prompt="say hi", stream=True))
    check(streamed[-1].done, f"generate(stream=True) yields {len(streamed)} chunks")

    embedded = client.embed(model=EMBED_MODEL, input=["one", "two"])
    check(
        len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) > 0,
        "embed() returns two vectors",
    )
    legacy = client.embeddings(model=EMBED_MODEL, prompt="one")
    check(len(legacy.embedding) > 0, "embeddings() returns a vector")

    shown = client.show(CHAT_MODEL)
    check(
        shown.modelinfo is not None and shown.details.family,
        "show() returns model_info and details",
    )

    running = [m.model for m in client.ps().models]
    check(f"{EMBED_MODEL}:latest" in running, f"ps() shows the warm embedder: {running}")

    try:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        check(False, "an unknown model is refused")
    except ollama.ResponseError as exc:
        check(
            exc.status_code == 404 and exc.error == "model 'no-such-model' not found",
            "an unknown model gets Ollama's own 404",
        )

    before = stand_in_stats(target)
    with ThreadPoolExecutor(max_workers=12) as pool:
        chats = [
            pool.submit(
                client.chat, model=CHAT_MODEL, messages=[{"role": "user", "content": f"q{i}"}]
            )
            for i in range(6)
        ]
        embeds = [pool.submit(client.embed, model=EMBED_MODEL, input=f"text {i}") for i in range(6)]
        results = [f.result() for f in chats + embeds]
    after = stand_in_stats(target)
    check(
        all(r is not None for r in results),
        "6 concurrent chats and 6 concurrent embeds all answered",
    )
    check(after["chats_total"] - before["chats_total"] == 6, "the target saw all 6 chats")
    check(after["max_chats_in_flight"] == 1, "the target never saw two chats at once")
    print(
        f"    max chats in flight at the target: {after['max_chats_in_flight']}, "
        f"max embeds in flight: {after['max_embeds_in_flight']}"
    )


def batch_job(url: str, token: str, secret: str) -> None:
    """Submit a batch chat job; wait for its signed webhooks; check both artifacts."""
    received: list[tuple[bytes, str]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers.get("X-Foreman-Signature", "")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{url}{path}", data=data, headers=auth)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()

    try:
        request = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "a batch job"}]}
        status, body = call(
            "/jobs",
            {
                "endpoint": "chat",
                "request": request,
                "state_webhook_url": f"http://127.0.0.1:{server.server_address[1]}/hook",
            },
        )
        job = json.loads(body)
        check(status == 202 and job["state"] == "queued", "POST /jobs queues a batch job (202)")
        deadline = time.monotonic() + 30
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        states = [json.loads(body)["state"] for body, _ in received]
        check(states == ["queued", "running", "succeeded"], f"its webhooks came in order: {states}")
        signed = all(
            signature == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            for body, signature in received
        )
        check(signed, "every webhook carries the HMAC-SHA256 of its body")
        job = json.loads(call(f"/jobs/{job['id']}")[1])
        check(job["state"] == "succeeded" and job["attempts"] == 1, "GET /jobs/{id}: succeeded")
        whole = json.loads(call(f"/jobs/{job['id']}/artifacts/response.json")[1])
        lines = [
            json.loads(line)
            for line in call(f"/jobs/{job['id']}/artifacts/stream.ndjson")[1].splitlines()
        ]
        check(
            whole["done"]
            and lines[-1]["done"]
            and whole["message"]["content"] == "".join(x["message"]["content"] for x in lines)
            and whole["eval_count"] == lines[-1]["eval_count"],
            f"response.json is the stream's {len(lines)} lines as one answer",
        )
    finally:
        server.shutdown()
        server.server_close()


def several_backends(url: str, token: str) -> None:
    """A second Ollama and a Claude stand-in, added through the API; aliases; fallback."""
    second_port, claude_port = free_port(), free_port()
    second_url, claude_url = f"http://127.0.0.1:{second_port}", f"http://127.0.0.1:{claude_port}"
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, Any, dict]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{url}{path}", data, auth, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, response.headers, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, json.loads(exc.read() or b"{}")

    def connected(backend_id: int) -> str:
        deadline = time.monotonic() + 15
        while True:
            listed = call("GET", "/admin/api/backends/status")[2]["backends"]
            state = next(b["status"]["state"] for b in listed if b["id"] == backend_id)
            if state != "connecting" or time.monotonic() > deadline:
                return state
            time.sleep(0.1)

    second_args = ["standin", "--listen", f"127.0.0.1:{second_port}", "--log-level", "warning"]
    claude_args = ["standin", "--api", "anthropic", "--api-key", "sk-ant-acceptance"]
    claude_args += ["--listen", f"127.0.0.1:{claude_port}", "--log-level", "warning"]
    with foreman_process(second_args) as second, foreman_process(claude_args):
        wait_http(f"{second_url}/api/version")
        wait_http(f"{claude_url}/v1/models")
        status, _, ollama2 = call(
            "POST",
            "/admin/api/backends",
            {"name": "second", "type": "ollama", "endpoint": second_url},
        )
        check(status == 201, "POST /admin/api/backends adds a second Ollama backend (201)")
        claude = {"name": "claude", "type": "anthropic", "endpoint": claude_url}
        status, _, claude = call(
            "POST", "/admin/api/backends", {**claude, "api_key": "sk-ant-acceptance"}
        )
        check(
            status == 201 and claude["api_key"] == "…ance",
            "a Claude backend is added; its API key comes back masked",
        )
        states = connected(ollama2["id"]), connected(claude["id"])
        check(states == ("connected", "connected"), f"both backends connect: {states}")
        models = call("GET", f"/admin/api/backends/{ollama2['id']}/models")[2]["models"]
        check(
            models and all(m["size_bytes"] for m in models),
            f"the second backend's {len(models)} models are listed with their sizes",
        )
        aliases = {"code": f"second/{CHAT_MODEL}", "research": "claude"}
        call("PUT", "/admin/api/preferences", {"aliases": aliases})
        client = ollama.Client(host=url, headers={"Authorization": f"Bearer {token}"})
        before = stand_in_stats(second_url)["chats_total"]
        reply = client.chat(model="code", messages=[{"role": "user", "content": "code!"}])
        check(
            reply.done and stand_in_stats(second_url)["chats_total"] == before + 1,
            "the alias 'code' chats on the second Ollama backend",
        )
        chunks = list(
            client.chat(
                model="research", messages=[{"role": "user", "content": "why?"}], stream=True
            )
        )
        text = "".join(c.message.content or "" for c in chunks)
        check(
            len(chunks) > 2 and chunks[-1].done and chunks[-1].eval_count and text,
            f"the alias 'research' streams from Claude in Ollama's shape ({len(chunks)} lines)",
        )
        chat = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}]}
        call("PUT", "/admin/api/preferences", {"default_backend_id": ollama2["id"]})
        _, headers, _ = call("POST", "/api/chat", {**chat, "stream": False})
        check(
            headers.get("X-Foreman-Backend") == f"second/{CHAT_MODEL}",
            "with the second backend as default, a plain chat goes there",
        )
        second.terminate()
        second.wait(10)
        status, headers, answer = call("POST", "/api/chat", {**chat, "stream": False})
        check(
            status == 200
            and headers.get("X-Foreman-Backend", "").startswith("claude/")
            and answer.get("done") is True,
            f"its stand-in stopped: the chat falls back to Claude ({headers['X-Foreman-Backend']})",
        )
        for backend in (ollama2, claude):
            call("DELETE", f"/admin/api/backends/{backend['id']}")
        call("PUT", "/admin/api/preferences", {})


def raw_request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, bytes] | None = None
) -> tuple[int, bytes]:
    """One request with the path sent exactly as given (no normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def closed_by_server(port: int, request: bytes) -> bool:
    """Send ``request`` on a raw socket; True if the server closes it after answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            return False
        return True


def get(url: str, timeout: float = 30) -> tuple[int, bytes, float]:
    """(status, body, seconds taken) of a GET."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(), time.monotonic() - start
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.monotonic() - start


def abuse(port: int, target: str) -> None:
    """What a hostile or careless client may send; the gate must hold, nothing may 500."""
    chat = json.dumps({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    for path in ("/api/./chat", "/api/x/../chat", "/api/%2e%2e/v1/chat/completions", "/api//chat"):
        status, body = raw_request(port, "POST", path, chat.encode())
        check((status, body) == (404, b"404 page not found"), f"POST {path} is gin's 404")
    before = stand_in_stats(target)
    with ThreadPoolExecutor(max_workers=5) as pool:
        spellings = ["/api/chat/", "/API/CHAT", "/api/%63hat", "/api/chat", "/api/generate"]
        bodies = [chat.encode(), chat.encode() + b"x", chat.encode(), chat.encode(), b"{"]
        statuses = list(
            pool.map(
                lambda a: raw_request(port, "POST", *a)[0], zip(spellings, bodies, strict=True)
            )
        )
    check(500 not in statuses, f"odd spellings and bodies answer without a 500: {statuses}")
    check(
        stand_in_stats(target)["max_chats_in_flight"] <= max(before["max_chats_in_flight"], 1),
        "odd spellings of chat still pass the gate",
    )
    status, _ = raw_request(
        port, "GET", "/api/version", headers={"User-Agent": "caf\xc3\xa9".encode("latin-1")}
    )
    check(status == 200, "a non-ASCII header value passes through (200)")
    status, _ = raw_request(
        port, "POST", "/api/chat", chat.encode(), {"Origin": b"http://evil.com"}
    )
    check(status == 403, "a foreign Origin gets Ollama's 403")
    for name, request in (
        ("HTTP/1.0", b"GET /api/version HTTP/1.0\r\n\r\n"),
        (
            "Connection: close",
            b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        ),
    ):
        check(closed_by_server(port, request), f"a {name} client is disconnected after its answer")


def outage(port: int, url: str, stand_in: subprocess.Popen[bytes]) -> None:
    """The target process is stopped (SIGSTOP) while its host still answers TCP."""
    fresh = get(f"{url}/api/tags")[1]
    stand_in.send_signal(signal.SIGSTOP)
    try:
        status, body, took = get(f"{url}/api/tags")
        check(
            status == 200 and body == fresh and took < 3,
            f"a frozen target: /api/tags answers from the last inventory in {took:.1f}s",
        )
        chat = {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "stream": False,
        }
        start = time.monotonic()
        status, _ = raw_request(port, "POST", "/api/chat", json.dumps(chat).encode())
        took = time.monotonic() - start
        check(
            status == 504 and took < 6,
            f"a frozen target: a non-stream chat gets 504 in {took:.1f}s",
        )
        deadline = time.monotonic() + 5
        while get(f"{url}/readyz")[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        check(get(f"{url}/readyz")[0] == 503, "a frozen target: /readyz says 503 within seconds")
    finally:
        stand_in.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    while get(f"{url}/readyz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    check(get(f"{url}/readyz")[0] == 200, "the target thawed: /readyz says 200 again")


def forced_stop(env: dict[str, str]) -> None:
    """A second signal while a stream runs stops foreman at once, with exit status 1."""
    target_port, port = free_port(), free_port()
    slow = [
        "standin",
        "--listen",
        f"127.0.0.1:{target_port}",
        "--reply-tokens",
        "100000",
        "--token-rate",
        "10",
        "--log-level",
        "warning",
    ]
    env = {
        **env,
        "FOREMAN_OLLAMA_URL": f"http://127.0.0.1:{target_port}",
        "FOREMAN_LISTEN": f"127.0.0.1:{port}",
    }
    with foreman_process(slow):
        wait_http(f"http://127.0.0.1:{target_port}/api/version")  # a stream needs its target
        with foreman_process(["serve"], env) as foreman:
            wait_http(f"http://127.0.0.1:{port}/healthz")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "long"}]}
            connection.request("POST", "/api/chat", json.dumps(body))
            connection.getresponse().readline()  # the stream runs
            foreman.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            check(foreman.poll() is None, "the first SIGTERM drains: the stream goes on")
            foreman.send_signal(signal.SIGTERM)
            check(
                foreman.wait(20) == 1, "a second SIGTERM stops foreman at once with exit status 1"
            )
            connection.close()


def main() -> int:
    target_port, foreman_port = free_port(), free_port()
    target = f"http://127.0.0.1:{target_port}"
    url = f"http://127.0.0.1:{foreman_port}"
    data_dir = tempfile.TemporaryDirectory(prefix="foreman-acceptance-")
    env = {
        "FOREMAN_OLLAMA_URL": target,
        "FOREMAN_LISTEN": f"127.0.0.1:{foreman_port}",
        "FOREMAN_EMBED_MODEL": EMBED_MODEL,
        "FOREMAN_PS_INTERVAL": "0.5",
        "FOREMAN_LOG_LEVEL": "warning",
        "FOREMAN_DATA_DIR": data_dir.name,
    }
    os.environ.pop("OLLAMA_API_KEY", None)  # the client sends it as a bearer to any host
    stand_in_args = [
        "standin",
        "--listen",
        f"127.0.0.1:{target_port}",
        "--token-rate",
        "200",
        "--log-level",
        "warning",
    ]
    with foreman_process(stand_in_args) as stand_in:
        wait_http(f"{target}/api/version")

        print("== foreman without FOREMAN_TOKEN")
        with foreman_process(["serve"], env) as foreman:
            wait_http(f"{url}/healthz")
            drive(ollama.Client(host=url), target)
            foreman.send_signal(signal.SIGTERM)
            check(foreman.wait(20) == 0, "SIGTERM stops foreman with exit status 0")

        print("== foreman with FOREMAN_TOKEN")
        secured = {**env, "FOREMAN_TOKEN": "acceptance-token", "FOREMAN_WEBHOOK_SECRET": "hush"}
        with foreman_process(["serve"], secured) as foreman:
            wait_http(f"{url}/healthz")
            try:
                ollama.Client(host=url).list()
                check(False, "a client without the token is refused")
            except ollama.ResponseError as exc:
                check(
                    exc.status_code == 401 and exc.error == "unauthorized",
                    "a client without the token gets 401 unauthorized",
                )
            drive(
                ollama.Client(host=url, headers={"Authorization": "Bearer acceptance-token"}),
                target,
            )
            batch_job(url, "acceptance-token", "hush")
            several_backends(url, "acceptance-token")
            foreman.send_signal(signal.SIGINT)
            check(foreman.wait(20) == 0, "SIGINT stops foreman with exit status 0")

        print("== abuse and outages")
        quick = {**env, "FOREMAN_CONTROL_TIMEOUT": "1", "FOREMAN_RESPONSE_TIMEOUT": "3"}
        with foreman_process(["serve"], quick) as foreman:
            wait_http(f"{url}/healthz")
            abuse(foreman_port, target)
            outage(foreman_port, url, stand_in)
            foreman.send_signal(signal.SIGTERM)
            check(foreman.wait(20) == 0, "SIGTERM stops foreman with exit status 0")
        forced_stop(env)
    data_dir.cleanup()
    print(f"acceptance: {len(CHECKS)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
