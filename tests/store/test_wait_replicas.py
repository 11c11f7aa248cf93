"""``RedisStore(wait_replicas=n)``: WAIT runs on the connection that wrote (issue 12). WAIT counts
the replicas holding the writes of the connection it is sent on; sent on another pooled
connection (which a concurrent caller can hand out) it answers for that one's older writes and
reports a write as replicated when no replica has it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tally.config import Settings
from tally.domain.accounts import Account
from tally.errors import ConfigError, StoreOutcomeUnknown
from tally.ops.node import RedisNode
from tally.store.async_shell import AsyncTransfers, Coalescer
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore

from .conftest import EPOCH, stamp_epoch


@pytest.fixture
def replica(redis_node: RedisNode, tmp_path: Path) -> Iterator[RedisNode]:
    node = RedisNode(name="replica", dir=tmp_path / "replica")
    node.start()
    try:
        with node.client() as c:
            c.replicaof(redis_node.host, redis_node.port)
            deadline = time.monotonic() + 20
            while c.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "replica never synced"
                time.sleep(0.05)
        yield node
    finally:
        if node.pid is not None:
            os.kill(node.pid, signal.SIGCONT)
        node.stop()


class _Alternating(redis.ConnectionPool):
    """Hands out its two connections in turn, as a pool shared by many threads may."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._pair = [super().get_connection(), super().get_connection()]
        self._turn = 0

    def get_connection(self, *args: object, **kwargs: object) -> redis.Connection:  # type: ignore[override]
        self._turn += 1
        return self._pair[self._turn % 2]  # type: ignore[return-value]

    def release(self, connection: redis.Connection) -> None:  # type: ignore[override]
        pass


def test_a_write_no_replica_has_is_reported_as_not_replicated(
    redis_node: RedisNode, replica: RedisNode
) -> None:
    pool = _Alternating(host=redis_node.host, port=redis_node.port, socket_timeout=5)
    client = redis.Redis(connection_pool=pool)
    layout = KeyLayout(shards=1)
    stamp_epoch(client, layout)
    store = RedisStore(client, layout, EPOCH, wait_replicas=1, wait_timeout_ms=300)
    store.load_scripts()
    store.upsert_account(Account("alice", "USD"))
    assert store.apply([("c0", "c", "alice", 5, "")]).replicas_acked == 1  # the replica is live
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGSTOP)  # it stays connected but acknowledges nothing
    # Applied on the primary, held by no replica: answered as unknown, never as decided (before
    # the check this call answered ok with replicas_acked == 0: the primary-pause loss).
    with pytest.raises(StoreOutcomeUnknown, match="acknowledged by 0 of 1"):
        store.apply([("c1", "c", "alice", 5, "")])
    os.kill(replica.pid, signal.SIGCONT)
    # The caller's retry of the same id, once a replica has it: the first outcome, exactly.
    replayed = store.apply([("c1", "c", "alice", 5, "")])
    assert replayed.replicas_acked == 1
    (first,) = replayed.results
    assert (first.transfer_id, first.result.name, first.balance_minor, first.replayed) == (
        "c1",
        "ok",
        10,
        True,
    )
    client.close()


def test_without_wait_a_write_no_replica_has_is_answered_as_decided(
    redis_node: RedisNode, replica: RedisNode
) -> None:
    """The control: wait_replicas=0 (a single node, or an operator's choice) sends no WAIT."""
    client = redis.Redis(host=redis_node.host, port=redis_node.port, socket_timeout=5)
    layout = KeyLayout(shards=1)
    stamp_epoch(client, layout)
    store = RedisStore(client, layout, EPOCH, wait_replicas=0)
    store.load_scripts()
    store.upsert_account(Account("alice", "USD"))
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGSTOP)
    applied = store.apply([("c1", "c", "alice", 5, "")])
    assert (applied.results[0].result.name, applied.replicas_acked) == ("ok", None)
    client.close()


def test_wait_replicas_is_one_for_sentinel_urls_unless_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sentinel = "sentinel://127.0.0.1:1/tally"
    assert Settings.resolve(redis_url=sentinel, home=str(tmp_path)).wait_replicas_effective == 1
    plain = Settings.resolve(redis_url="redis://127.0.0.1:1/0", home=str(tmp_path))
    assert plain.wait_replicas_effective == 0
    monkeypatch.setenv("TALLY_WAIT_REPLICAS", "0")
    assert Settings.resolve(redis_url=sentinel, home=str(tmp_path)).wait_replicas_effective == 0
    monkeypatch.setenv("TALLY_WAIT_REPLICAS", "two")
    with pytest.raises(ConfigError, match="TALLY_WAIT_REPLICAS"):
        Settings.resolve(redis_url=sentinel, home=str(tmp_path))
    monkeypatch.setenv("TALLY_WAIT_REPLICAS", "auto")
    monkeypatch.setenv("TALLY_WAIT_TIMEOUT_MS", "999999")
    with pytest.raises(ConfigError, match="wait_timeout_ms"):
        Settings.resolve(redis_url=sentinel, home=str(tmp_path))


def test_the_async_shell_answers_unknown_for_every_caller_of_an_unreplicated_batch(
    redis_node: RedisNode, replica: RedisNode
) -> None:
    """The HTTP fast path (coalesced debits) keeps the same rule: every caller in the batch the
    WAIT answered for hears unknown; after the replica is back, the retries replay."""
    client = redis.Redis(host=redis_node.host, port=redis_node.port, socket_timeout=5)
    layout = KeyLayout(shards=1)
    stamp_epoch(client, layout)
    store = RedisStore(client, layout, EPOCH, wait_replicas=1, wait_timeout_ms=300)
    store.load_scripts()
    store.upsert_account(Account("alice", "USD"))
    store.apply([("top", "c", "alice", 100, "")])
    assert replica.pid is not None

    async def debits() -> list[object]:
        shell = AsyncTransfers(store)
        batcher = Coalescer(shell, batch_max=8)
        try:
            jobs = [batcher.submit((f"d{i}", "d", "alice", 1, "")) for i in range(5)]
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            await shell.aclose()

    os.kill(replica.pid, signal.SIGSTOP)
    try:
        stalled = asyncio.run(debits())
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    assert all(isinstance(o, StoreOutcomeUnknown) for o in stalled), stalled
    retried = asyncio.run(debits())
    assert [(r.result.name, r.replayed) for r in retried] == [("ok", True)] * 5  # type: ignore[union-attr]
    client.close()


def test_a_hold_capture_no_replica_has_is_unknown_and_its_retry_replays(
    redis_node: RedisNode, replica: RedisNode
) -> None:
    """A capture is a debit: held by no replica, it is answered as unknown, as a transfer is
    (the lab's no-min-replicas partition found an acknowledged capture lost at the heal)."""
    client = redis.Redis(host=redis_node.host, port=redis_node.port, socket_timeout=5)
    layout = KeyLayout(shards=1)
    stamp_epoch(client, layout)
    store = RedisStore(client, layout, EPOCH, wait_replicas=1, wait_timeout_ms=300)
    store.load_scripts()
    store.upsert_account(Account("alice", "USD"))
    store.apply([("top", "c", "alice", 100, "")])
    assert store.place_hold("h1", "alice", 40, 600_000).code.name == "ok"
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreOutcomeUnknown, match="acknowledged by 0 of 1"):
            store.capture_hold("h1", 25)
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    again = store.capture_hold("h1", 25)
    assert (again.code.name, again.captured_minor, again.balance_minor, again.replayed) == (
        "ok",
        25,
        75,
        True,
    )
    client.close()
