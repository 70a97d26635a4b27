"""Fixtures: foreman in front of the stand-in target, all in-process.

foreman's app and the stand-in both run as ASGI apps behind
:class:`~foreman.standins.ollama.ASGIStreamTransport`, so there are no sockets and
trio's ``MockClock`` with autojump makes time-based tests exact and fast.
Tests that need real sockets (graceful shutdown, the acceptance script) use
the default clock.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest
import trio
import trio.testing

from foreman import Gateway, Settings, create_app, open_gateway
from foreman.app import App
from foreman.logs import configure_logging
from foreman.standins.ollama import ASGIStreamTransport, StandIn

from .postgres import Cluster, PostgresMissing, start_cluster

TARGET = "http://127.0.0.1:11434"


@dataclass
class Foreman:
    gw: Gateway
    app: App  # foreman's ASGI app (for requests httpx would normalise: tests/asgi.py)
    client: httpx.AsyncClient  # talks to foreman
    standin: StandIn
    target: httpx.AsyncClient  # talks to the stand-in directly, bypassing foreman


#: Every test's data directory lives in here, removed when the test run ends.
DATA_ROOT = tempfile.TemporaryDirectory(prefix="foreman-tests-")


#: The database of the running test when it is parametrized by :func:`database`
#: (None: SQLite in the data directory, as by default).
DATABASE_URL: str | None = None


def settings(**changes: Any) -> Settings:
    base = Settings(
        ollama_url=TARGET,
        embed_model="nomic-embed-text",
        poll_interval=30.0,
        ps_interval=10.0,
        idle_timeout=60.0,
        data_dir=tempfile.mkdtemp(dir=DATA_ROOT.name),
        database_url=DATABASE_URL,
        secret_key="test-secret-key" if DATABASE_URL else None,
    )
    return base.replace(**changes)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the whole run (tests/postgres.py).

    Skips when PostgreSQL is missing; fails instead with FOREMAN_REQUIRE_POSTGRES=1.
    """
    try:
        cluster = start_cluster()
    except PostgresMissing as exc:
        if os.environ.get("FOREMAN_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"FOREMAN_REQUIRE_POSTGRES=1 but {exc}")
        pytest.skip(str(exc))
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Runs a test once on SQLite and once on a fresh PostgreSQL database: the
    test's :func:`settings` (and so :func:`open_foreman`) use it. Yields the URL
    (None for SQLite)."""
    global DATABASE_URL
    if request.param == "sqlite":
        yield None
        return
    DATABASE_URL = request.getfixturevalue("pg_cluster").new_database()
    try:
        yield DATABASE_URL
    finally:
        DATABASE_URL = None


@asynccontextmanager
async def open_foreman(
    nursery: trio.Nursery,
    standin: StandIn,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    webhook_transport: httpx.AsyncBaseTransport | None = None,
    backend_transports: dict[str, httpx.AsyncBaseTransport] | None = None,
    **changes: Any,
) -> AsyncIterator[Foreman]:
    """foreman with ``settings(**changes)`` in front of ``standin``.

    ``transport`` replaces the way to the stand-in (to wrap it); ``webhook_transport``
    receives the state webhooks; ``backend_transports`` maps endpoint URLs of added
    backends to their stand-ins.
    """
    async with open_gateway(
        settings(**changes),
        transport=transport or standin.transport(nursery),
        webhook_transport=webhook_transport,
        backend_transports=backend_transports,
    ) as gw:
        app = create_app(gw)
        async with (
            httpx.AsyncClient(
                transport=ASGIStreamTransport(app, nursery),
                base_url="http://localhost:8080",
            ) as client,
            httpx.AsyncClient(transport=standin.transport(nursery), base_url=TARGET) as target,
        ):
            yield Foreman(gw, app, client, standin, target)


@pytest.fixture
def autojump_clock(request: pytest.FixtureRequest) -> trio.testing.MockClock:
    """trio's mock clock, jumping once every task has been blocked for 5 ms of real time
    (20 ms on PostgreSQL, whose calls take a round trip).

    pytest-trio's own jumps at once; but foreman's store runs in a thread, and a clock
    that jumps while a thread works races through every periodic deadline (the
    pollers) until the thread is done. A short real pause lets store calls finish.
    """
    on_postgres = "database" in request.fixturenames and request.getfixturevalue("database")
    return trio.testing.MockClock(autojump_threshold=0.02 if on_postgres else 0.005)


@pytest.fixture
def standin() -> StandIn:
    return StandIn(token_rate=10.0)


@pytest.fixture
async def fm(nursery: trio.Nursery, standin: StandIn) -> AsyncIterator[Foreman]:
    """foreman in front of ``standin`` (tests add ``autojump_clock`` to run on the mock clock)."""
    async with open_foreman(nursery, standin) as foreman:
        yield foreman


def chat_body(model: str = "llama3.2", text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def reads_for_unknown_keys(fm: Foreman, count: int = 20) -> tuple[int, int]:
    """Send ``count`` requests with one unknown ``fm_`` key at once (each must get 401), then
    one with a key that is not foreman's (401 too). Returns how many reads of the users the
    flood began, and how many the last request began."""
    users = fm.gw.users
    assert users is not None
    reads = 0
    reload = users.reload

    async def counted() -> None:
        nonlocal reads
        reads += 1
        await reload()

    users.reload = counted  # type: ignore[method-assign]
    codes = []

    async def wrong() -> None:
        bad = {"authorization": "Bearer fm_not-a-key-at-all"}
        codes.append((await fm.client.get("/api/tags", headers=bad)).status_code)

    try:
        async with trio.open_nursery() as flood:
            for _ in range(count):
                flood.start_soon(wrong)
        assert codes == [401] * count
        flooded = reads
        other = await fm.client.get("/api/tags", headers={"authorization": "Bearer nope"})
        assert other.status_code == 401
        return flooded, reads - flooded
    finally:
        users.reload = reload  # type: ignore[method-assign]


@contextmanager
def captured_logs(form: str) -> Iterator[io.StringIO]:
    """foreman's logging in ``form`` (``text`` or ``json``), into a string for the test;
    the root logger as it was afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("INFO", form, stream)
    try:
        yield stream
    finally:
        root.handlers[:], root.level = handlers, level
