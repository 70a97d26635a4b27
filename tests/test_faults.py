"""Nothing a client, a stored row or a disk does stops foreman (issue 16): real processes."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from cryptography.fernet import Fernet, InvalidToken

from foreman.backends.sealing import Sealer
from foreman.store.sqlite import _connect

from .conftest import chat_body
from .processes import answering, foreman, free_port, process, standin, until

#: webhook URLs that each once stopped foreman at their first delivery, and at every start
POISONED_URLS = ("http://x:abc/", "http://x/" + "a" * 65_537, "http://x/\r\nX: y", "http://x/\x00")


def _poison(db_path: Path) -> None:
    """A database holding one finished job per poisoned URL, its delivery due (as a
    foreman that did not check URLs at submission stored them)."""
    db = _connect(str(db_path))
    with db:
        for number, url in enumerate(POISONED_URLS):
            db.execute(
                "INSERT INTO jobs (id, endpoint, request, model, priority, state, created_at,"
                " finished_at, webhook_url) VALUES (?, 'chat', '{}', 'm', 'batch', 'succeeded',"
                " ?, ?, ?)",
                (f"j{number}", time.time(), time.time(), url),
            )
            db.execute(
                "INSERT INTO deliveries (job_id, url, body, next_at) VALUES (?, ?, '{}', 0)",
                (f"j{number}", url),
            )
    db.close()


def test_a_poisoned_delivery_row_is_recorded_and_foreman_stays_up(tmp_path: Path) -> None:
    _poison(tmp_path / "foreman.db")
    with standin() as target, foreman(target, tmp_path) as (url, proc):
        with sqlite3.connect(tmp_path / "foreman.db") as db:
            until(
                lambda: (
                    db.execute("SELECT COUNT(*) FROM deliveries WHERE attempts > 0").fetchone()[0]
                    == len(POISONED_URLS)
                ),
                what="every poisoned delivery tried",
            )
            rows = db.execute("SELECT last_error, next_at FROM deliveries").fetchall()
        assert all(error.startswith("cannot be sent: ") for error, _ in rows), rows
        assert all(next_at == float("inf") for _, next_at in rows), rows  # given up, once
        time.sleep(0.5)
        assert proc.poll() is None
        assert httpx.get(f"{url}/api/tags").status_code == 200
        job = httpx.get(f"{url}/jobs/j0").json()
        assert job["webhook"]["last_error"].startswith("cannot be sent: ")


# --- the store ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 5 MB tmpfs (``mount`` needs root: CI runs as root; elsewhere the test skips)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _jobs_in(url: str, state: str) -> int:
    return len(httpx.get(f"{url}/jobs", params={"state": state, "limit": 500}).json()["jobs"])


def test_a_full_disk_degrades_foreman_and_every_job_finishes_once_space_returns(
    small_disk: Path,
) -> None:
    with (
        standin("--reply-tokens", "5", "--token-rate", "100") as target,
        foreman(target, small_disk) as (url, proc),
    ):
        batch = [{"endpoint": "chat", "request": chat_body(text=f"job {i}")} for i in range(40)]
        assert httpx.post(f"{url}/jobs", json=batch).status_code == 202
        until(lambda: _jobs_in(url, "succeeded") >= 3, what="the first jobs")
        filler = _fill(small_disk)

        until(lambda: httpx.get(f"{url}/readyz").status_code == 503, what="/readyz 503")
        health = httpx.get(f"{url}/healthz").json()
        assert health["status"] == "degraded"
        assert health["store"]["status"] == "degraded"
        assert "foreman.db" in health["store"]["error"]
        submitted = httpx.post(f"{url}/jobs", json=batch[0])
        assert submitted.status_code == 503
        assert "try again later" in submitted.json()["error"]
        assert submitted.headers["retry-after"]
        stalled = _jobs_in(url, "succeeded")
        assert stalled < 40
        for _ in range(3):  # the data plane does not need the store
            chat = httpx.post(f"{url}/api/chat", json=chat_body(stream=False), timeout=10)
            assert chat.status_code == 200, chat.text
            embed = httpx.post(
                f"{url}/api/embed", json={"model": "nomic-embed-text", "input": "x"}, timeout=10
            )
            assert embed.status_code == 200, embed.text
        assert _jobs_in(url, "succeeded") == stalled  # no job runs without a place for its answer
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()

        # a start on the full disk serves too, degraded
        port = free_port()
        env = {
            "FOREMAN_OLLAMA_URL": target,
            "FOREMAN_LISTEN": f"127.0.0.1:{port}",
            "FOREMAN_DATA_DIR": str(small_disk),
            "FOREMAN_LOG_LEVEL": "warning",
        }
        url = f"http://127.0.0.1:{port}"
        with process("serve", env=env) as again:
            until(lambda: answering(f"{url}/healthz"), what="foreman on a full disk")
            assert httpx.get(f"{url}/api/tags").status_code == 200
            filler.unlink()
            until(lambda: httpx.get(f"{url}/readyz").status_code == 200, what="/readyz 200")
            until(lambda: _jobs_in(url, "succeeded") == 40, seconds=60, what="every job")
            assert _jobs_in(url, "failed") == 0
            assert again.poll() is None


def _immutable(paths: list[Path], on: bool) -> None:
    for path in paths:
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


def test_a_read_only_store_degrades_and_recovers_by_itself(tmp_path: Path) -> None:
    with standin() as target, foreman(target, tmp_path) as (url, proc):
        job = {"endpoint": "chat", "request": chat_body()}
        assert httpx.post(f"{url}/jobs", json=job).status_code == 202
        # the database and its log, not the shared-memory index (mapped: SIGBUS)
        files = [tmp_path / "foreman.db", tmp_path / "foreman.db-wal"]
        try:
            _immutable(files, True)
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"chattr +i is not permitted here (needs root): {exc}")
        try:
            refused = httpx.post(f"{url}/jobs", json=job)
            assert refused.status_code == 503, refused.text
            assert "foreman.db" in refused.json()["error"]
            assert httpx.get(f"{url}/readyz").status_code == 503
            assert httpx.get(f"{url}/api/tags").status_code == 200
        finally:
            _immutable(files, False)
        until(lambda: httpx.get(f"{url}/readyz").status_code == 200, what="/readyz 200 again")
        assert httpx.post(f"{url}/jobs", json=job).status_code == 202
        assert proc.poll() is None


def test_a_store_deleted_while_foreman_runs_is_noticed(tmp_path: Path) -> None:
    with standin() as target, foreman(target, tmp_path) as (url, proc):
        (tmp_path / "foreman.db").unlink()
        until(lambda: httpx.get(f"{url}/readyz").status_code == 503, seconds=10, what="503")
        assert "deleted" in httpx.get(f"{url}/healthz").json()["store"]["error"]
        refused = httpx.post(f"{url}/jobs", json={"endpoint": "chat", "request": chat_body()})
        assert refused.status_code == 503
        assert proc.poll() is None


def _serve_once(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FOREMAN_DATA_DIR": str(data_dir),
        "FOREMAN_LISTEN": f"127.0.0.1:{free_port()}",
        "FOREMAN_OLLAMA_URL": "http://127.0.0.1:9",
    }
    return subprocess.run(
        [sys.executable, "-m", "foreman", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_corrupt_store_is_found_at_start_in_one_line(tmp_path: Path) -> None:
    db_path = tmp_path / "foreman.db"
    db = _connect(str(db_path))
    with db:  # enough rows for pages past the schema's
        db.executemany(
            "INSERT INTO jobs (id, endpoint, request, priority, state, created_at)"
            " VALUES (?, 'chat', ?, 'batch', 'queued', 0)",
            [(f"j{i}", b"x" * 2000) for i in range(200)],
        )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with open(db_path, "r+b") as file:  # garbage in the middle of the file
        file.seek(db_path.stat().st_size // 2)
        file.write(os.urandom(8192))
    done = _serve_once(tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "is corrupt" in done.stderr and "backup" in done.stderr


@pytest.mark.parametrize("kind", ["garbage", "directory"])
def test_a_store_that_cannot_be_opened_is_one_line_and_exit_1(tmp_path: Path, kind: str) -> None:
    if kind == "garbage":
        (tmp_path / "foreman.db").write_bytes(b"not a database" * 1000)
    else:
        (tmp_path / "foreman.db").mkdir()
    done = _serve_once(tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


# --- secret.key ----------------------------------------------------------------------------


def _sealed_store(data_dir: Path) -> bytes:
    """A store holding one backend with a sealed API key; returns the key file's bytes."""
    sealer = Sealer(None, str(data_dir))
    db = _connect(str(data_dir / "foreman.db"))
    with db:
        db.execute(
            "INSERT INTO backends (name, type, endpoint, api_key, created_at, updated_at)"
            " VALUES ('claude', 'anthropic', NULL, ?, 0, 0)",
            (sealer.seal("sk-ant-0123456789"),),
        )
    db.close()
    return (data_dir / "secret.key").read_bytes()


def _one_line_exit(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def test_a_missing_secret_key_stops_start_up_in_one_line(tmp_path: Path) -> None:
    _sealed_store(tmp_path)
    (tmp_path / "secret.key").unlink()
    _one_line_exit(_serve_once(tmp_path), "secret.key is missing", "claude")
    assert not (tmp_path / "secret.key").exists()  # never made anew behind our back


def test_another_secret_key_stops_start_up_in_one_line(tmp_path: Path) -> None:
    _sealed_store(tmp_path)
    (tmp_path / "secret.key").write_bytes(Fernet.generate_key() + b"\n")
    _one_line_exit(_serve_once(tmp_path), "secret.key is not the secret that sealed them")


def test_garbage_in_the_secret_key_is_one_line(tmp_path: Path) -> None:
    _sealed_store(tmp_path)
    (tmp_path / "secret.key").write_bytes(b"\x00garbage\n")
    _one_line_exit(_serve_once(tmp_path), "secret.key: line 1 is not a key foreman wrote")


def test_unreadable_keys_may_be_allowed_and_are_said_loudly(tmp_path: Path) -> None:
    _sealed_store(tmp_path)
    (tmp_path / "secret.key").unlink()
    with (
        standin() as target,
        foreman(target, tmp_path, FOREMAN_ALLOW_UNREADABLE_KEYS="1") as (url, proc),
    ):
        backends = httpx.get(f"{url}/admin/api/backends").json()["backends"]
        claude = next(b for b in backends if b["name"] == "claude")
        assert claude["api_key"].startswith("<unreadable")
        assert proc.poll() is None
    assert not (tmp_path / "secret.key").exists()


def test_secrets_rotate_reseals_every_key_under_a_new_one(tmp_path: Path) -> None:
    old = _sealed_store(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "foreman", "secrets", "--data-dir", str(tmp_path), "rotate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "re-sealed 1 API key(s)" in done.stdout
    new = (tmp_path / "secret.key").read_bytes()
    assert new != old and new.count(b"\n") == 1
    db = sqlite3.connect(tmp_path / "foreman.db")
    sealed = db.execute("SELECT api_key FROM backends WHERE name = 'claude'").fetchone()[0]
    db.close()
    assert Sealer(None, str(tmp_path)).open(sealed) == "sk-ant-0123456789"
    # the old key no longer opens it
    with pytest.raises(InvalidToken):
        Fernet(old.strip()).decrypt(sealed)
