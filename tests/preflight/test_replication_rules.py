"""Replication rules (TP002-TP005, TP008, TP009, TP011): each danger shown on real redis-server
processes first (through the fault proxy where a link matters), then the rule catching it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tally.ops.faultproxy import LinkSpec, ProxyHub
from tally.ops.node import RedisNode
from tally.ops.preflight import PreflightParams, check_config_file, check_live
from tally.ops.profiles import ProfileParams
from tests.waiting import wait_for

from .conftest import NodeFactory, ids, link_status, severity_of

LINK = "dc1-dc2"
MB = 1_000_000


@pytest.fixture
def primary(make_node: NodeFactory) -> RedisNode:
    node = make_node("primary", repl_diskless_sync="no")
    node.client().config_set("repl-ping-replica-period", 1)  # silence is noticed in seconds
    node.client().config_set("repl-timeout", 2)
    return node


@pytest.fixture
def hub(primary: RedisNode) -> Iterator[ProxyHub]:
    with ProxyHub([LinkSpec(LINK, "127.0.0.1", primary.port)]) as running:
        yield running


def _replica(make_node: NodeFactory, hub: ProxyHub, name: str = "replica") -> RedisNode:
    host, port = hub.address(LINK)
    node = make_node(name, replicaof=f"{host} {port}", repl_timeout=2)
    wait_for(lambda: link_status(node) == "up", what=f"{name} link up")
    return node


def _stats(node: RedisNode) -> dict[str, int]:
    return {k: int(v) for k, v in node.client().info("stats").items() if isinstance(v, int)}


# -- TP002 / TP003 -------------------------------------------------------------------------------
def test_a_primary_configured_as_replica_of_itself_is_read_only_and_tp002_tp003_catch_it(
    make_node: NodeFactory,
) -> None:
    node = make_node("primary", start=False)
    node.directives["replicaof"] = f"127.0.0.1 {node.port}"
    node.start()
    with pytest.raises(redis.ReadOnlyError):
        node.client().set("balance:1", 100)  # the danger: every balance write fails
    assert {"TP002", "TP003"} <= ids(check_config_file(node.config_path, role="primary"))
    assert {"TP002", "TP003"} <= ids(check_live(node.client(), role="primary"))
    assert ids(check_config_file(node.config_path, role="replica")) >= {"TP003"}


def test_replicaof_another_node_on_a_primary_is_tp002_but_not_tp003(
    make_node: NodeFactory,
) -> None:
    node = make_node("primary", replicaof="127.0.0.1 1", start=False)
    found = ids(check_config_file(node.config_path, role="primary"))
    assert "TP002" in found and "TP003" not in found
    assert "TP002" not in ids(check_config_file(node.config_path, role="replica"))


# -- TP004 ---------------------------------------------------------------------------------------
def test_a_small_backlog_turns_a_partition_into_a_full_sync_and_tp004_catches_it(
    make_node: NodeFactory, primary: RedisNode, hub: ProxyHub
) -> None:
    primary.client().config_set("repl-backlog-size", 16 * 1024)  # the 2013 profile's size
    replica = _replica(make_node, hub)
    before = _stats(primary)
    hub.set_fault(LINK, "both", "partition", mode="drop")
    wait_for(lambda: link_status(replica) == "down", what="replica link down")
    primary.client().mset({f"balance:{i}": "x" * 1000 for i in range(100)})  # 100 kB > 16 kB
    hub.clear(LINK)
    wait_for(lambda: link_status(replica) == "up", what="replica link up again")
    after = _stats(primary)
    assert after["sync_full"] == before["sync_full"] + 1  # the danger: a full resync
    assert after["sync_partial_err"] == before["sync_partial_err"] + 1

    params = PreflightParams(ProfileParams(write_rate_bytes_per_s=10_000, partition_s_max=60))
    primary.directives["repl-backlog-size"] = "16kb"
    primary.write_config()
    assert severity_of(check_config_file(primary.config_path, params=params), "TP004") == "error"
    assert "TP004" in ids(check_live(primary.client(), params=params))
    primary.directives["repl-backlog-size"] = "1mb"  # >= 10 kB/s x 60 s, < that x safety 2
    primary.write_config()
    assert severity_of(check_config_file(primary.config_path, params=params), "TP004") == "warning"
    primary.directives["repl-backlog-size"] = "2mb"  # >= 10 kB/s x 60 s x 2
    primary.write_config()
    assert "TP004" not in ids(check_config_file(primary.config_path, params=params))


# -- TP005 ---------------------------------------------------------------------------------------
class _Writer:
    """Writes ~1 MB/s to the primary until stopped (at most ``seconds_max``)."""

    def __init__(self, node: RedisNode, seconds_max: float = 60.0) -> None:
        self.client, self.stop = node.client(), threading.Event()
        self.deadline = time.monotonic() + seconds_max
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            self.client.set(f"usage:{n % 1000}", b"y" * 5000)
            n += 1
            time.sleep(0.005)

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_a_small_replica_output_buffer_loops_full_syncs_over_a_slow_link_and_tp005_catches_it(
    make_node: NodeFactory, primary: RedisNode, hub: ProxyHub
) -> None:
    client = primary.client()
    client.config_set("client-output-buffer-limit", "replica 256kb 128kb 1")
    pipe = client.pipeline(transaction=False)
    for i in range(4000):  # ~8 MB that does not compress, so the RDB is ~8 MB too
        pipe.set(f"balance:{i}", os.urandom(2000))
    pipe.execute()
    client.save()  # the RDB preflight sizes the dataset from
    hub.set_fault(LINK, "downstream", "bandwidth", rate_bytes_s=1_000_000)
    host, port = hub.address(LINK)
    with _Writer(primary):
        make_node("replica", replicaof=f"{host} {port}")
        wait_for(lambda: _stats(primary)["sync_full"] >= 2, "a second full sync", timeout_s=60)
    # the danger: the first full sync was cut off and started over

    primary.directives["client-output-buffer-limit"] = "replica 256kb 128kb 1"
    primary.write_config()
    # stated: a 1 MB dataset; the ~8 MB RDB beside the config is larger, so it counts
    sizing = ProfileParams(
        write_rate_bytes_per_s=1_000_000, slowest_link_bytes_per_s=1_000_000, dataset_bytes_max=MB
    )
    found = check_config_file(primary.config_path, params=PreflightParams(sizing))
    assert severity_of(found, "TP005") == "error"
    assert "the RDB file" in next(f.detail for f in found if f.rule_id == "TP005")
    primary.directives["client-output-buffer-limit"] = "replica 64mb 32mb 60"
    primary.write_config()
    assert "TP005" not in ids(
        check_config_file(primary.config_path, params=PreflightParams(sizing))
    )


def test_tp005_checks_the_stated_dataset_bytes_max_when_the_node_holds_less(
    make_node: NodeFactory,
) -> None:
    # the limit that looped above; no RDB yet: the dataset a full sync will move is the stated one
    node = make_node("primary", start=False, client_output_buffer_limit="replica 256kb 128kb 1")
    link = {"write_rate_bytes_per_s": 1_000_000, "slowest_link_bytes_per_s": 1_000_000}
    big = PreflightParams(ProfileParams(**link, dataset_bytes_max=8 * MB))
    small = PreflightParams(ProfileParams(**link, dataset_bytes_max=100_000))
    assert severity_of(check_config_file(node.config_path, params=big), "TP005") == "error"
    assert "TP005" not in ids(check_config_file(node.config_path, params=small))


def test_tp005_is_quiet_over_an_unlimited_link_as_the_profile_sizes_it(
    make_node: NodeFactory,
) -> None:
    node = make_node("primary", start=False, client_output_buffer_limit="replica 256kb 128kb 1")
    sizing = ProfileParams(dataset_bytes_max=8 * MB)
    assert "TP005" in ids(check_config_file(node.config_path, params=PreflightParams(sizing)))
    unlimited = PreflightParams(sizing, slowest_link_bytes_per_s=0)
    assert "TP005" not in ids(check_config_file(node.config_path, params=unlimited))


# -- TP008 ---------------------------------------------------------------------------------------
def _forks_for_three_replicas(make_node: NodeFactory, primary: RedisNode) -> int:
    replicas = [make_node(f"replica{i}") for i in range(3)]
    before = int(primary.client().info("stats")["total_forks"])
    for replica in replicas:  # they come back together, a few hundred ms apart
        replica.client().replicaof("127.0.0.1", primary.port)
        time.sleep(0.3)
    for replica in replicas:
        wait_for(lambda r=replica: link_status(r) == "up", what="replica synced")
    return int(primary.client().info("stats")["total_forks"]) - before


def test_disk_based_sync_forks_for_every_replica_and_tp008_catches_it(
    make_node: NodeFactory, primary: RedisNode
) -> None:
    primary.client().set("balance:1", 1)
    assert _forks_for_three_replicas(make_node, primary) >= 2  # the danger: one fork each
    params = PreflightParams(replicas_expected=3)
    assert "TP008" in ids(check_config_file(primary.config_path, params=params))
    assert "TP008" in ids(check_live(primary.client(), params=params))


def test_diskless_sync_with_a_delay_serves_all_replicas_with_one_fork_and_tp008_is_quiet(
    make_node: NodeFactory,
) -> None:
    primary = make_node("primary", repl_diskless_sync="yes", repl_diskless_sync_delay=2)
    primary.client().set("balance:1", 1)
    assert _forks_for_three_replicas(make_node, primary) == 1
    params = PreflightParams(replicas_expected=3)
    assert "TP008" not in ids(check_config_file(primary.config_path, params=params))


# -- TP009 ---------------------------------------------------------------------------------------
def test_an_isolated_primary_keeps_acknowledging_writes_and_tp009_catches_it(
    make_node: NodeFactory, primary: RedisNode, hub: ProxyHub
) -> None:
    _replica(make_node, hub)
    hub.set_fault(LINK, "both", "partition", mode="drop")
    time.sleep(3)  # longer than any lag bound used below
    assert primary.client().set("balance:1", 100)  # the danger: acknowledged, reaches no one
    assert "TP009" in ids(check_config_file(primary.config_path))
    assert "TP009" in ids(check_live(primary.client()))

    primary.client().config_set("min-replicas-to-write", 1)
    primary.client().config_set("min-replicas-max-lag", 2)
    with pytest.raises(redis.ResponseError, match="NOREPLICAS"):
        primary.client().set("balance:1", 200)
    assert "TP009" not in ids(check_live(primary.client()))


# -- TP011 ---------------------------------------------------------------------------------------
def test_a_replica_booted_without_replicaof_accepts_writes_and_tp011_catches_it(
    make_node: NodeFactory,
) -> None:
    node = make_node("replica")
    assert node.client().info("replication")["role"] == "master"
    assert node.client().set("balance:1", 100)  # the danger: a write the real primary never sees
    assert "TP011" in ids(check_config_file(node.config_path, role="replica"))
    assert "TP011" in ids(check_live(node.client(), role="replica"))
