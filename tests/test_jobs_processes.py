"""Real processes: a SIGKILL loses no job; the ``foreman jobs`` CLI; keep-alive after
answers that did not read their request's body."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2 as httpx

from .conftest import chat_body
from .processes import foreman, standin, until


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server on loopback that keeps every JSON body POSTed to it, in order."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_sigkill_mid_job_loses_nothing_and_the_job_runs_again(tmp_path: Path) -> None:
    with (
        standin("--reply-tokens", "10", "--token-rate", "100") as target,
        webhook_receiver() as (hook, received),
    ):
        with foreman(target, tmp_path) as (url, proc):
            batch = [
                {
                    "endpoint": "chat",
                    "request": chat_body(text=f"job {i}"),
                    "state_webhook_url": hook,
                }
                for i in range(50)
            ]
            ids = [job["id"] for job in httpx.post(f"{url}/jobs", json=batch).json()["jobs"]]
            # freeze the target in the middle of one job's stream, then kill foreman
            interrupted = None
            for _ in range(50):
                until(lambda: _count(url, "succeeded") >= 3, what="three jobs done")
                httpx.post(f"{target}/_standin/freeze")
                time.sleep(0.3)  # what is on its way arrives
                running = httpx.get(f"{url}/jobs", params={"state": "running"}).json()["jobs"]
                prompts = httpx.get(f"{target}/_standin/stats").json()["prompts"]
                if len(running) == 1 and prompts.get(f"job {ids.index(running[0]['id'])}"):
                    interrupted = running[0]["id"]  # the target is streaming its answer
                    break
                httpx.post(f"{target}/_standin/thaw")  # frozen between two jobs: again
            assert interrupted is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        httpx.post(f"{target}/_standin/thaw")
        with foreman(target, tmp_path) as (url, _):
            until(lambda: _count(url, "succeeded") == 50, seconds=60, what="all 50 jobs")
            jobs = {job_id: httpx.get(f"{url}/jobs/{job_id}").json() for job_id in ids}
            until(lambda: _states(received).keys() == set(ids), what="the webhooks")
            until(lambda: all(s[-1] == "succeeded" for s in _states(received).values()))
        prompts = httpx.get(f"{target}/_standin/stats").json()["prompts"]

    for i, job_id in enumerate(ids):
        twice = job_id == interrupted
        assert prompts[f"job {i}"] == (2 if twice else 1), job_id
        assert jobs[job_id]["attempts"] == (2 if twice else 1)
        expected = ["queued", "running", "queued", "running", "succeeded"]
        assert _states(received)[job_id] == (expected if twice else expected[2:])


def _count(url: str, state: str) -> int:
    return len(httpx.get(f"{url}/jobs", params={"state": state, "limit": 500}).json()["jobs"])


def _states(received: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each job's states as its webhooks told them, a repeat delivery counted once
    (a delivery made just before the SIGKILL but not yet marked is made again)."""
    states: dict[str, list[str]] = {}
    for body in received:
        seen = states.setdefault(body["id"], [])
        if not seen or seen[-1] != body["state"]:
            seen.append(body["state"])
    return states


def test_the_jobs_cli_submits_waits_lists_shows_and_cancels(tmp_path: Path) -> None:
    with standin("--reply-tokens", "3", "--token-rate", "100") as target:
        with foreman(target, tmp_path) as (url, _):

            def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [sys.executable, "-m", "foreman", "jobs", "--url", url, *args],
                    input=stdin,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )

            done = cli(
                "submit",
                "chat",
                "--wait",
                "--metadata",
                '{"doc": 7}',
                stdin=json.dumps(chat_body(text="summarise")),
            )
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            assert answer["done"] is True and answer["message"]["role"] == "assistant"
            job_id = done.stderr.strip()

            listed = cli("list", "--json")
            assert [job["id"] for job in json.loads(listed.stdout)["jobs"]] == [job_id]
            table = cli("list")
            assert job_id in table.stdout and "succeeded" in table.stdout

            shown = json.loads(cli("show", job_id).stdout)
            assert shown["metadata"] == {"doc": 7} and shown["state"] == "succeeded"
            assert {a["name"] for a in shown["artifacts"]} == {"response.json", "stream.ndjson"}

            refused = cli("cancel", job_id)
            assert refused.returncode == 1
            assert refused.stderr == f"foreman: job '{job_id}' is already succeeded (HTTP 409)\n"

            bad = cli("submit", "chat", '{"model": "nope"}')
            assert bad.returncode == 1 and "model 'nope' not found (HTTP 404)" in bad.stderr

        gone = cli("list")
        assert gone.returncode == 1 and gone.stderr.startswith("foreman: cannot reach foreman")


def test_an_answer_that_did_not_read_its_body_leaves_keep_alive_healthy(tmp_path: Path) -> None:
    """A 404 to a POST with a body (the control plane's, the stand-in's) and the next
    request on the same pooled connection: it must be answered (it used to hang)."""
    chat = chat_body()
    with standin("--token-rate", "1000") as target, foreman(target, tmp_path) as (url, _):
        for base, unread in [(url, "/jobs/a/b/c"), (url, "/api/x/../chat"), (target, "/api/chat/")]:
            with httpx.Client(base_url=base, timeout=5.0) as client:
                for _ in range(40):  # the hang came within a few rounds
                    with ThreadPoolExecutor(4) as pool:
                        answers = list(
                            pool.map(
                                lambda path: client.post(path, json=chat).status_code,
                                [unread, "/api/chat", unread, "/api/tags"],
                            )
                        )
                    assert answers[1] == 200 and answers[3] in (200, 405), answers
