"""The store refuses to write on an empty, foreign or read-only dataset (F3, F4, invariant 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tally.errors import StoreLost, StoreReadOnly, StoreUnavailable
from tally.ops.node import RedisNode
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore

from .conftest import EPOCH, open_account, stamp_epoch


def test_restart_with_appendonly_and_no_aof_comes_back_empty_and_refuses_every_write(
    tmp_path: Path, layout: KeyLayout
) -> None:
    """The 2013 defect, for real: a good dump.rdb, a restart with ``appendonly yes`` and no AOF."""
    node = RedisNode(name="primary", dir=tmp_path / "p")
    node.start()
    try:
        client = node.client()
        stamp_epoch(client, layout)
        store = RedisStore(client, layout, EPOCH)
        open_account(store, "alice")
        store.apply([("top", "c", "alice", 500, "")])
        client.save()
        assert (tmp_path / "p" / "dump.rdb").stat().st_size > 0
        node.restart(directives={"appendonly": "yes"})
        client = node.client()
        assert client.dbsize() == 0, "Redis loaded nothing: the incident's empty dataset"
        store = RedisStore(client, layout, EPOCH)
        with pytest.raises(StoreLost) as lost:
            store.apply([("d1", "d", "alice", 1, "")])
        assert [r.result.name for r in lost.value.partial] == ["store_lost"]  # type: ignore[attr-defined]
        with pytest.raises(StoreLost):
            store.read_accounts(["alice"])
        with pytest.raises(StoreLost):
            open_account(store, "mallory")
        assert client.dbsize() == 0, "nothing was written to the empty dataset"
    finally:
        node.stop()


def test_a_foreign_dataset_with_another_epoch_refuses_writes(
    store: RedisStore, layout: KeyLayout
) -> None:
    open_account(store, "alice")
    stamp_epoch(store.client, layout, "E-other-ledger")
    with pytest.raises(StoreLost):
        store.apply([("c1", "c", "alice", 1, "")])


def test_a_client_configured_with_another_shard_count_sees_store_lost(store: RedisStore) -> None:
    other = RedisStore(store.client, KeyLayout(shards=8), EPOCH)
    with pytest.raises(StoreLost):
        other.apply([("c1", "c", "alice", 1, "")])


def test_a_primary_restarted_as_a_replica_fails_writes_fast_with_readonly(
    store: RedisStore, redis_node: RedisNode
) -> None:
    open_account(store, "alice")
    redis_node.client().replicaof(redis_node.host, redis_node.port)  # of itself, as in 2013
    with pytest.raises(StoreReadOnly):
        store.apply([("c1", "c", "alice", 1, "")])


def test_an_unreachable_store_is_a_typed_error_not_a_retry(
    layout: KeyLayout, tmp_path: Path
) -> None:
    node = RedisNode(name="gone", dir=tmp_path)
    port = node.port
    client = redis.Redis(
        port=port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )
    with pytest.raises(StoreUnavailable):
        RedisStore(client, layout, EPOCH).apply([("c1", "c", "alice", 1, "")])
