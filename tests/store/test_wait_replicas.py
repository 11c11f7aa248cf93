"""``RedisStore(wait_replicas=n)``: WAIT runs on the connection that wrote (issue 12). WAIT counts
the replicas holding the writes of the connection it is sent on; sent on another pooled
connection (which a concurrent caller can hand out) it answers for that one's older writes and
reports a write as replicated when no replica has it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tally.domain.accounts import Account
from tally.ops.node import RedisNode
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
    applied = store.apply([("c1", "c", "alice", 5, "")])
    assert applied.results[0].result.name == "ok"
    assert applied.replicas_acked == 0
    client.close()
