"""Concurrent debits from several processes never overdraw: the check and the write are one step."""

from __future__ import annotations

import multiprocessing as mp

from tally.ops.node import RedisNode
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore

from .conftest import EPOCH, open_account

PROCESSES = 4
DEBITS_EACH = 200
AMOUNT = 7
FUNDS = 2000  # enough for 285 debits of 7, far fewer than the 800 attempted


def _worker(port: int, shards: int, worker: int, out: mp.Queue) -> None:
    import redis

    store = RedisStore(redis.Redis(port=port, socket_timeout=10), KeyLayout(shards=shards), EPOCH)
    ok = 0
    for i in range(DEBITS_EACH):
        (r,) = store.apply([(f"w{worker}-{i}", "d", "shared", AMOUNT, "")]).results
        ok += r.result.name == "ok"
    out.put(ok)


def test_concurrent_debits_from_several_processes_never_overdraw(
    store: RedisStore, redis_node: RedisNode, layout: KeyLayout
) -> None:
    open_account(store, "shared")
    store.apply([("fund", "c", "shared", FUNDS, "")])
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(redis_node.port, layout.shards, w, out))
        for w in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    ok_total = sum(out.get(timeout=5) for _ in procs)
    balance = store.read_accounts(["shared"])["shared"].balance_minor  # type: ignore[union-attr]
    assert ok_total == FUNDS // AMOUNT
    assert balance == FUNDS - ok_total * AMOUNT >= 0
