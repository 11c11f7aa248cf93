"""A real replica whose link to its primary runs through the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tally.ops.faultproxy import ProxyHub
from tally.ops.node import RedisNode, orphan_pids
from tests.waiting import wait_for

from .conftest import LINK


def _link_status(replica: RedisNode) -> str:
    return str(replica.client().info("replication").get("master_link_status", "none"))


def _sync_counts(primary: RedisNode) -> tuple[int, int]:
    stats = primary.client().info("stats")
    return int(stats["sync_full"]), int(stats["sync_partial_ok"])


@pytest.fixture
def replica(tmp_path: Path, redis_node: RedisNode, hub: ProxyHub) -> Iterator[RedisNode]:
    # The primary pings every second, so a replica with a 2 s timeout notices silence quickly.
    redis_node.client().config_set("repl-ping-replica-period", 1)
    redis_node.client().config_set("repl-timeout", 2)
    host, port = hub.address(LINK)
    node = RedisNode(
        name="replica",
        dir=tmp_path / "replica",
        directives={"replicaof": f"{host} {port}", "repl-timeout": 2},
    )
    node.start()
    try:
        wait_for(lambda: _link_status(node) == "up", what="replica link up")
        yield node
    finally:
        node.stop()
        assert orphan_pids(str(tmp_path / "replica")) == []


@pytest.mark.parametrize("mode", ["drop", "refuse"])
def test_partitioned_replica_loses_its_link_and_resyncs_partially_after_clear(
    hub: ProxyHub, redis_node: RedisNode, replica: RedisNode, mode: str
) -> None:
    full_before, partial_before = _sync_counts(redis_node)
    hub.set_fault(LINK, "both", "partition", mode=mode)
    wait_for(lambda: _link_status(replica) == "down", what="replica link down")
    redis_node.client().set("written-during-partition", "1")
    assert replica.client().get("written-during-partition") is None
    hub.clear(LINK)
    wait_for(lambda: _link_status(replica) == "up", what="replica link up again")
    wait_for(lambda: replica.client().get("written-during-partition") == b"1", what="catch-up")
    full_after, partial_after = _sync_counts(redis_node)
    assert (full_after, partial_after) == (full_before, partial_before + 1)
