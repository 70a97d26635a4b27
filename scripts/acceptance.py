#!/usr/bin/env python3
"""Acceptance: the official ``ollama`` Python client against foreman, all real processes.

Starts the stand-in target (``foreman standin``) and foreman (``foreman serve``)
on free loopback ports, drives foreman with ``ollama.Client`` — chat (streamed
and not), generate, embed, embeddings, list, ps, show — first without and then
with ``FOREMAN_TOKEN``, checks every answer, checks at the stand-in that
concurrent chats never overlapped while embeds did, and that SIGTERM stops
foreman with exit status 0.

Usage: python scripts/acceptance.py   (exit status 0 when every check passed)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

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


def main() -> int:
    target_port, foreman_port = free_port(), free_port()
    target = f"http://127.0.0.1:{target_port}"
    url = f"http://127.0.0.1:{foreman_port}"
    env = {
        "FOREMAN_OLLAMA_URL": target,
        "FOREMAN_LISTEN": f"127.0.0.1:{foreman_port}",
        "FOREMAN_EMBED_MODEL": EMBED_MODEL,
        "FOREMAN_PS_INTERVAL": "0.5",
        "FOREMAN_LOG_LEVEL": "warning",
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
    with foreman_process(stand_in_args):
        wait_http(f"{target}/api/version")

        print("== foreman without FOREMAN_TOKEN")
        with foreman_process(["serve"], env) as foreman:
            wait_http(f"{url}/healthz")
            drive(ollama.Client(host=url), target)
            foreman.send_signal(signal.SIGTERM)
            check(foreman.wait(20) == 0, "SIGTERM stops foreman with exit status 0")

        print("== foreman with FOREMAN_TOKEN")
        with foreman_process(["serve"], {**env, "FOREMAN_TOKEN": "acceptance-token"}) as foreman:
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
            foreman.send_signal(signal.SIGINT)
            check(foreman.wait(20) == 0, "SIGINT stops foreman with exit status 0")
    print(f"acceptance: {len(CHECKS)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
