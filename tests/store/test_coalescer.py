"""Automatic batching as TigerBeetle's client does it: sent at once when idle, joined while a call
is in flight, capped, each caller with exactly its own outcome. And the async shell follows a
failover, closing the old pool."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.errors import StoreBackpressure, StoreOutcomeUnknown
from tally.ops.node import RedisNode
from tally.store.async_shell import AsyncTransfers, Coalescer
from tally.store.redis_store import RedisStore
from tally.store.transfer_codec import RawTransfer, Settled

from .conftest import open_account


class GatedShell:
    """Stands in for ``AsyncTransfers``: records each call's batch and holds it until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail: dict[int, BaseException] = {}  # call number -> what it raises

    async def settle(self, transfers: Sequence[RawTransfer]) -> tuple[Settled, None]:
        self.batches.append([t[0] for t in transfers])
        call = len(self.batches) - 1
        await self.gate.wait()
        if call in self.fail:
            raise self.fail[call]
        results: list[TransferResult | None] = [
            TransferResult(t[0], Result.ok, t[3], False) for t in transfers
        ]
        return Settled(results, [None] * len(transfers)), None


def coalescer(shell: GatedShell, **kw: int) -> Coalescer:
    return Coalescer(shell, **kw)  # type: ignore[arg-type]


def raw(n: int) -> RawTransfer:
    return (f"t{n}", "d", f"a{n}", n, "")


def test_an_idle_coalescer_sends_at_once_without_waiting_for_company() -> None:
    async def scenario() -> None:
        shell = GatedShell()
        batcher = coalescer(shell)
        task = asyncio.create_task(batcher.submit(raw(1)))
        for _ in range(3):  # a few loop turns, no timer: the call is already out
            await asyncio.sleep(0)
        assert shell.batches == [["t1"]]
        shell.gate.set()
        assert (await task).balance_minor == 1

    asyncio.run(scenario())


def test_debits_arriving_while_a_call_is_in_flight_leave_together_up_to_the_cap() -> None:
    async def scenario() -> None:
        shell = GatedShell()
        batcher = coalescer(shell, batch_max=4)
        first = asyncio.create_task(batcher.submit(raw(0)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert batcher.in_flight
        rest = [asyncio.create_task(batcher.submit(raw(n))) for n in range(1, 11)]
        await asyncio.sleep(0)
        shell.gate.set()
        results = await asyncio.gather(first, *rest)
        assert [len(b) for b in shell.batches] == [1, 4, 4, 2]
        assert [r.transfer_id for r in results] == [f"t{n}" for n in range(11)]
        assert [r.balance_minor for r in results] == list(range(11)), "each its own result"
        assert not batcher.in_flight

    asyncio.run(scenario())


def test_a_failed_call_fails_each_of_its_callers_and_only_them() -> None:
    async def scenario() -> None:
        shell = GatedShell()
        batcher = coalescer(shell, batch_max=2)
        shell.fail[0] = StoreOutcomeUnknown("connection broke")
        first = asyncio.create_task(batcher.submit(raw(0)))
        await asyncio.sleep(0)
        second = [asyncio.create_task(batcher.submit(raw(n))) for n in (1, 2)]
        await asyncio.sleep(0)
        shell.gate.set()
        with pytest.raises(StoreOutcomeUnknown):
            await first
        assert [(await t).transfer_id for t in second] == ["t1", "t2"]

    asyncio.run(scenario())


def test_the_waiting_queue_is_bounded() -> None:
    async def scenario() -> None:
        shell = GatedShell()
        batcher = coalescer(shell, batch_max=2, queue_max=2)
        tasks = [asyncio.create_task(batcher.submit(raw(0)))]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert batcher.in_flight
        tasks += [asyncio.create_task(batcher.submit(raw(n))) for n in range(1, 5)]
        await asyncio.sleep(0)
        refused = [t for t in tasks if t.done() and isinstance(t.exception(), StoreBackpressure)]
        assert len(refused) == 2  # one in flight, two waiting, two refused
        shell.gate.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())


def test_many_concurrent_debits_each_get_their_own_result_from_real_redis(
    store: RedisStore,
) -> None:
    for n in range(20):
        open_account(store, f"acc{n}")
        store.apply([(f"top{n}", "c", f"acc{n}", 10_000, "")])

    async def scenario() -> list[TransferResult | BaseException]:
        shell = AsyncTransfers(store)
        batcher = Coalescer(shell, batch_max=16)
        try:
            jobs = [
                batcher.submit((f"d{i}", "d", f"acc{i % 20}", 1 + i % 7, "")) for i in range(400)
            ]
            jobs += [batcher.submit(("d5", "d", "acc5", 1 + 5 % 7, "")) for _ in range(3)]
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            assert batcher.calls < 400, "concurrent debits were coalesced"
            await shell.aclose()

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, TransferResult) for o in outcomes)
    results: list[TransferResult] = outcomes  # type: ignore[assignment]
    assert [r.transfer_id for r in results[:400]] == [f"d{i}" for i in range(400)]
    assert all(r.result is Result.ok for r in results)
    assert [r.replayed for r in results[400:]] == [True, True, True]
    assert {r.balance_minor for r in results[400:]} == {results[5].balance_minor}
    balances = store.read_accounts([f"acc{n}" for n in range(20)])
    for n in range(20):
        spent = sum(1 + i % 7 for i in range(400) if i % 20 == n)
        assert balances[f"acc{n}"].balance_minor == 10_000 - spent  # type: ignore[union-attr]


def test_a_failover_moves_the_async_shell_to_the_new_client_and_closes_the_old_pool(
    store: RedisStore, redis_node: RedisNode
) -> None:
    open_account(store, "alice")
    store.apply([("top", "c", "alice", 100, "")])

    async def scenario() -> None:
        shell = AsyncTransfers(store)
        await shell.apply([("d1", "d", "alice", 1, "")])
        old = shell._client
        assert old is not None
        old_pool = old.connection_pool
        old_conns = list(old_pool._available_connections)  # type: ignore[attr-defined]
        assert [c.is_connected for c in old_conns] == [True], "the old pool holds a connection"
        store.client = redis_node.client()  # what RedisStore.reconnect does after a failover
        (result,) = (await shell.apply([("d2", "d", "alice", 1, "")])).results
        assert result.result is Result.ok
        assert shell._client is not old and shell.pools_closed == 1
        assert [c.is_connected for c in old_conns] == [False], "the old pool was closed"
        await shell.aclose()

    asyncio.run(scenario())
