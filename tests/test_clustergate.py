"""The gate across replicas (foreman/dataplane/clustergate.py): several replicas' gates on
one PostgreSQL database, in one process; each "replica" has its own store and sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from foreman.dataplane.clustergate import RECHECK, ClusterGate, ClusterGates
from foreman.dataplane.errors import GateFull
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
