"""The gate across replicas (foreman/dataplane/clustergate.py): several replicas' gates on
one PostgreSQL database, in one process; each "replica" has its own store and sessions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from foreman.dataplane import clustergate
from foreman.dataplane.clustergate import RECHECK, ClusterGate, ClusterGates
from foreman.dataplane.errors import GateFull, GateLost
from foreman.store import open_store

SERVER = "http://127.0.0.1:11434"


async def until(condition: Callable[[], Any]) -> None:
    """Wait (5 s at most) until ``condition()`` holds: the gates' state is read, not awaited."""
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.005)


def waiting(gates: list[ClusterGate]) -> int:
    """Waiters of both lanes on these replicas' gates."""
    return sum(g.statistics().waiting + g.statistics().waiting_batch for g in gates)


@asynccontextmanager
async def replicas(
    nursery: trio.Nursery, url: str, count: int, max_waiting: int = 64
) -> AsyncIterator[list[ClusterGates]]:
    async with AsyncExitStack() as stack:
        found = []
        for n in range(count):
            store = await stack.enter_async_context(open_store(url))
            gates = ClusterGates(store, f"r{n}", max_waiting, 1 << 30)
            scope = trio.CancelScope()

            async def run(
                gates: ClusterGates = gates, scope: trio.CancelScope = scope, *, task_status: Any
            ) -> None:
                with scope:
                    await gates.run(task_status=task_status)

            await nursery.start(run)
            stack.callback(scope.cancel)
            found.append(gates)
        yield found


@pytest.fixture
async def url(pg_cluster: Any) -> str:
    return pg_cluster.new_database()


async def test_one_holder_across_replicas_in_arrival_order_interactive_first(
    nursery: trio.Nursery, url: str
) -> None:
    async with replicas(nursery, url, 3) as cluster:
        gates = [g.new(SERVER) for g in cluster]
        holding, most, order = 0, 0, []
        first_in, everyone_waits = trio.Event(), trio.Event()

        async def chat(gate: ClusterGate, name: str, lane: Any = "interactive") -> None:
            nonlocal holding, most
            async with gate.hold(lane=lane):
                holding += 1
                most = max(most, holding)
                order.append(name)
                if name == "first":
                    first_in.set()
                    await everyone_waits.wait()
                await trio.sleep(0.01)
                holding -= 1

        async with trio.open_nursery() as chats:
            chats.start_soon(chat, gates[0], "first")
            await first_in.wait()
            names = []
            for n in range(12):  # arrive one after the other, round-robin across replicas
                lane = "batch" if n % 4 == 0 else "interactive"
                names.append((lane, f"{lane}-{n}"))
                chats.start_soon(chat, gates[n % 3], f"{lane}-{n}", lane)
                await until(lambda n=n: waiting(gates) > n)
            everyone_waits.set()
        assert most == 1
        expected = [name for lane, name in names if lane == "interactive"]
        expected += [name for lane, name in names if lane == "batch"]
        assert order == ["first", *expected]


async def test_max_queue_counts_the_clusters_waiters(nursery: trio.Nursery, url: str) -> None:
    async with replicas(nursery, url, 2, max_waiting=2) as cluster:
        a, b = (g.new(SERVER) for g in cluster)
        release = trio.Event()

        async def hold(gate: ClusterGate, lane: Any = "interactive") -> None:
            async with gate.hold(lane=lane):
                await release.wait()

        nursery.start_soon(hold, a)
        await until(lambda: a.statistics().in_flight)
        nursery.start_soon(hold, a)
        nursery.start_soon(hold, b)
        await until(lambda: waiting([a, b]) == 2)
        with pytest.raises(GateFull):  # two wait already, one on each replica
            async with b.hold():
                pass
        async with trio.open_nursery() as inner:
            inner.start_soon(hold, b, "batch")  # the batch lane is not bounded by it
            await until(lambda: b.statistics().waiting_batch)
            release.set()


async def test_a_dead_replica_frees_the_slot_and_its_places(
    nursery: trio.Nursery, url: str, pg_cluster: Any
) -> None:
    async with replicas(nursery, url, 2) as (dying, living):
        doomed, gate = dying.new(SERVER), living.new(SERVER)
        held = trio.Event()

        async def hold_forever() -> None:
            with contextlib.suppress(GateLost):  # its own watchdog may end it first
                async with doomed.hold():
                    held.set()
                    await trio.sleep_forever()

        nursery.start_soon(hold_forever)
        await held.wait()
        nursery.start_soon(hold_forever)  # a place in line on the dying replica
        await until(lambda: doomed.statistics().waiting)

        # the dying replica's sessions end, as a SIGKILL or a lost network ends them
        pg_cluster.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE pid <> pg_backend_pid() AND datname = '{url.rsplit('/', 1)[1]}'"
            f" AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory'"
            f" UNION SELECT {dying.session[0]})"
        )
        start = trio.current_time()
        with trio.fail_after(RECHECK * 5):
            async with gate.hold():
                waited = trio.current_time() - start
        assert waited < RECHECK * 3


def kill_the_holder(pg_cluster: Any, url: str) -> None:
    """End the session holding a gate's slot in ``url``'s database, from outside (as an
    administrator, a failover or a lost network on PostgreSQL's side ends it)."""
    pg_cluster.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
        f" AND database = (SELECT oid FROM pg_database WHERE datname = '{url.rsplit('/', 1)[1]}')"
    )


async def test_a_holder_whose_session_is_killed_ends_its_chat_before_the_next_one_starts(
    url: str, pg_cluster: Any
) -> None:
    async with trio.open_nursery() as nursery, replicas(nursery, url, 2) as (first, second):
        a, b = first.new(SERVER), second.new(SERVER)
        running, most, held = 0, 0, trio.Event()
        ended: dict[str, float] = {}

        async def chat(gate: ClusterGate, name: str) -> None:
            nonlocal running, most
            async with gate.hold():
                running += 1
                most = max(most, running)
                held.set()
                try:
                    await trio.sleep(60 if name == "a" else 0.05)
                finally:
                    running -= 1
                    ended[name] = trio.current_time()

        async def lost_chat() -> None:
            with pytest.raises(GateLost, match="database session"):
                await chat(a, "a")

        async with trio.open_nursery() as chats:
            chats.start_soon(lost_chat)
            await held.wait()
            chats.start_soon(chat, b, "b")
            await until(lambda: b.statistics().waiting)
            killed = trio.current_time()
            kill_the_holder(pg_cluster, url)
            with trio.fail_after(RECHECK * 4):
                await until(lambda: "b" in ended)
        assert most == 1  # b's chat began only once a's had ended
        assert ended["a"] - killed < RECHECK * 3


class Network:
    """A TCP proxy in front of PostgreSQL that can be cut as a partition cuts it: from
    :meth:`cut` on, bytes go nowhere either way and no connection is closed."""

    def __init__(self, port: int) -> None:
        self.port, self.cut_off = port, False
        self.scope = trio.CancelScope()

    async def serve(self, *, task_status: Any) -> None:
        with self.scope:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(self._proxy, listeners)

    def cut(self) -> None:
        self.cut_off = True

    async def _proxy(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.port) as server:
            async with trio.open_nursery() as pumps:
                pumps.start_soon(self._pump, client, server)
                pumps.start_soon(self._pump, server, client)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        while data := await source.receive_some():
            if not self.cut_off:
                await sink.send_all(data)


async def test_a_holder_cut_off_from_the_database_ends_its_chat_within_recheck_plus_lost_after(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clustergate, "LOST_AFTER", 2.0)  # a quicker test; 4 s in production
    host, database = url.rsplit("/", 1)
    network = Network(int(host.rsplit(":", 1)[1]))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(network.serve)
        proxied = f"{host.rsplit(':', 1)[0]}:{port}/{database}"
        async with replicas(nursery, proxied, 1) as (replica,):
            gate, held, ended = replica.new(SERVER), trio.Event(), []

            async def chat() -> None:
                with pytest.raises(GateLost, match="no word"):
                    async with gate.hold():
                        held.set()
                        try:
                            await trio.sleep(60)
                        finally:
                            ended.append(trio.current_time())

            async with trio.open_nursery() as chats:
                chats.start_soon(chat)
                await held.wait()
                await trio.sleep(RECHECK * 1.5)  # the session was found alive at least once
                network.cut()
                cut = trio.current_time()
                try:
                    with trio.fail_after(RECHECK + clustergate.LOST_AFTER + 1):
                        while not ended:  # noqa: ASYNC110
                            await trio.sleep(0.01)
                finally:
                    network.scope.cancel()  # the sessions behind the cut end: all can stop
            assert ended[0] - cut <= RECHECK + clustergate.LOST_AFTER
            assert ended[0] - cut >= clustergate.LOST_AFTER - RECHECK  # on no word, not at once
