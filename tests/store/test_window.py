"""The idempotency window: transfer-id records live in two generations per tx shard, dropped
whole, so Redis memory is bounded by rate x window instead of growing with history."""

from __future__ import annotations

import time

from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore

from .conftest import open_account

BYTES_PER_RECORD_MAX = 120


def _records(store: RedisStore, layout: KeyLayout) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for shard in range(layout.shards):
        for generation in (0, 1):
            raw = store.client.hgetall(layout.tx_generation(shard, generation))
            out.update({k.decode(): v for k, v in raw.items()})
    return out


def _tx_bytes(store: RedisStore, layout: KeyLayout) -> int:
    keys = [layout.tx_generation(s, g) for s in range(layout.shards) for g in (0, 1)]
    return sum(int(store.client.memory_usage(k, samples=0) or 0) for k in keys)


def _date_every_generation_back(store: RedisStore, layout: KeyLayout) -> None:
    """As if a whole window had passed on the server's clock."""
    for shard in range(layout.shards):
        key = layout.tx_generations_key(shard)
        current = (store.client.get(key) or b"0|0").split(b"|")[0]
        store.client.set(key, current + b"|0")


def test_the_servers_clock_turns_the_window_over_and_replays_stay_exact_inside_it(
    store: RedisStore, layout: KeyLayout
) -> None:
    open_account(store, "acme", limit=1000)
    store.idempotency_window_ms = 400
    first = store.apply([("t1", "d", "acme", 7, "")]).results[0]
    time.sleep(0.45)
    store.apply([("t2", "d", "acme", 1, "")])  # t1's generation becomes the previous one
    again = store.apply([("t1", "d", "acme", 7, "")]).results[0]
    assert again == first._replace(replayed=True)  # the whole first outcome, balance included
    assert "t1" in _records(store, layout)
    time.sleep(0.45)
    store.apply([(f"t3-{s}", "d", "acme", 1, "") for s in range(40)])  # touches every tx shard
    assert "t1" not in _records(store, layout)  # dropped with its generation, whole


def test_memory_is_flat_once_the_window_is_full(store: RedisStore, layout: KeyLayout) -> None:
    """Six windows of the same traffic: records and used_memory stop growing after two (the
    current and the previous generation); each live record costs at most 120 bytes."""
    open_account(store, "acme", limit=10**12)
    store.idempotency_window_ms = 3_600_000  # turned over by the test, not by waiting
    per_window, memory, live = 4000, [], []
    for window in range(6):
        for start in range(0, per_window, 1000):
            batch = [(f"w{window}-{i:06d}", "d", "acme", 1, "") for i in range(start, start + 1000)]
            store.apply(batch)
        for key in layout.journals():  # what the drainer does once the ledger has the lines
            store.client.xtrim(key, maxlen=0)
        live.append(len(_records(store, layout)))
        memory.append(int(store.client.info("memory")["used_memory"]))
        if window == 3:
            per_record = _tx_bytes(store, layout) / live[-1]
            assert per_record <= BYTES_PER_RECORD_MAX, per_record
        _date_every_generation_back(store, layout)
    assert live[:2] == [per_window, 2 * per_window]
    assert live[2:] == [2 * per_window] * 4  # the window is full: the oldest drop whole
    steady = memory[2:]
    assert max(steady) - min(steady) < 0.1 * (memory[1] - memory[0]) * 2
