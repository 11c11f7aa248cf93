"""Preflight on Redis Cluster nodes: TP012 (cluster-node-timeout against min-replicas-max-lag
and the WAN), TP013 (a primary without a replica in another data center), TP014
(cluster-require-full-coverage) and the 2013 defects (TP001-TP003) on cluster nodes. Each
danger is first shown on real redis-server processes, then the rule catching its config."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from redis.crc import key_slot

from tally.cli.preflight_cmd import preflight
from tally.errors import ProcessError
from tally.ops.binary import RedisBinary
from tally.ops.cluster import Cluster
from tally.ops.cluster.formation import cluster_info, cluster_nodes, slot_ranges
from tally.ops.node import ConfigValue, RedisNode, orphan_pids, render_config
from tally.ops.preflight import (
    PreflightParams,
    check_config_file,
    check_live,
    check_topology,
)
from tally.ops.preflight.settings import (
    PREFLIGHT_READS,
    PREFLIGHT_READS_7,
    PREFLIGHT_READS_CLUSTER,
)
from tally.ops.profiles import (
    ClusterAnnounce,
    NodeRole,
    cluster_node_directives,
    node_directives,
    single_node_directives,
)
from tally.ops.topology import load_topology
from tests.binaries import BINARIES, binary_id

from ..cluster.rc_topologies import redis_cluster
from .conftest import NodeFactory, ids

EXAMPLE = Path(__file__).parents[2] / "examples" / "topology-cluster-3dc.toml"
WAIT_S = 60.0
PASSWORD = "cluster-rules-test-secret"


def _until(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except (redis.RedisError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(0.1)


def _key_for_shard(k: int, shards: int = 3) -> str:
    first, end = slot_ranges(shards)[k]
    return next(
        f"{{acct{i}}}" for i in range(100_000) if first <= key_slot(f"{{acct{i}}}".encode()) < end
    )


def _owner_of_slot0(cluster: Cluster, asked: str) -> str | None:
    by_front = {h.front: name for name, h in cluster.nodes.items()}
    for view in cluster_nodes(cluster.nodes[asked]):
        if view.is_primary and any(first == 0 for first, _ in view.slots):
            return by_front.get(view.address)
    return None


# -- the configs tally generates ---------------------------------------------------------------
@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
@pytest.mark.parametrize("profile", ["hardened", "2013"])
def test_generated_cluster_configs_state_every_setting_preflight_reads(
    binary: RedisBinary, profile: str, tmp_path: Path
) -> None:
    role = NodeRole(None, replicas_expected=2)
    directives: dict[str, ConfigValue] = {
        **node_directives(profile, binary, role, password=PASSWORD),
        **cluster_node_directives(profile, binary, 21000, ClusterAnnounce("127.0.1.1", 1, 2)),
    }
    node = RedisNode(name="n", dir=tmp_path / "n", port=21000, binary=binary, directives=directives)
    stated = {line.split()[0] for line in render_config(directives).splitlines()}
    wanted = set(PREFLIGHT_READS + PREFLIGHT_READS_CLUSTER) - {"port", "bind", "dir"}
    wanted |= set(PREFLIGHT_READS_7) if binary.at_least(7, 0) else set()
    assert wanted <= stated
    node.write_config()
    params = dataclasses.replace(
        PreflightParams.for_topology(load_topology(EXAMPLE)), redis_version=binary.version[:2]
    )
    for role_meant in ("primary", "replica"):
        found = ids(check_config_file(node.config_path, role=role_meant, params=params))
        cluster_rules = found & {"TP002", "TP011", "TP012", "TP014"}
        assert cluster_rules == (set() if profile == "hardened" else {"TP014"})
    # Every config, cluster or not, says whether it is one: no version default decides.
    assert node_directives(profile, binary, role, password=PASSWORD)["cluster-enabled"] == "no"
    assert single_node_directives(binary)["cluster-enabled"] == "no"


def test_a_fresh_replica_with_aof_on_and_the_rdb_its_sync_wrote_is_not_tp001(
    tmp_path: Path,
) -> None:
    """Control: such a replica (no keys, appendonly yes, a non-empty dump.rdb: the full sync
    wrote it) drew TP001 live, so no freshly formed cluster passed live preflight."""
    with Cluster(redis_cluster(tmp_path / "rc", replicas=1)) as cluster:
        replica = cluster.nodes["a2"]
        client = replica.client()
        assert client.dbsize() == 0 and client.config_get("appendonly")["appendonly"] == "yes"
        assert (replica.node.dir / "dump.rdb").stat().st_size > 0
        assert "TP001" not in ids(check_live(client, role="replica"))
    assert orphan_pids(str(tmp_path)) == []


# -- TP014 ---------------------------------------------------------------------------------------
def test_full_coverage_required_lets_one_dead_shard_stop_every_shard_and_tp014_catches_it(
    tmp_path: Path,
) -> None:
    """Three primaries, no replicas (so none can take over). With
    cluster-require-full-coverage yes, killing one makes the two healthy ones refuse their
    own keys (CLUSTERDOWN); with no (what tally generates) they serve."""
    topology = redis_cluster(
        tmp_path / "rc", replicas=0, cluster_node_timeout_ms=1000, min_replicas_to_write=0
    )
    with Cluster(topology) as cluster:
        b2, c3 = cluster.nodes["b2"], cluster.nodes["c3"]
        assert "TP014" not in ids(check_live(b2.client()))
        for name in ("b2", "c3"):
            cluster.nodes[name].client().config_set("cluster-require-full-coverage", "yes")
        assert "TP014" in ids(check_live(b2.client()))
        key = _key_for_shard(1)  # b2's own slots
        b2.client().set(key, "before")
        cluster.nodes["a1"].kill()
        _until("b2 says cluster_state fail", lambda: cluster_info(b2)["cluster_state"] == "fail")
        with pytest.raises(redis.exceptions.ClusterDownError):
            b2.client().set(key, "refused")  # b2 is healthy and owns this slot
        for handle in (b2, c3):
            handle.client().config_set("cluster-require-full-coverage", "no")
        _until("b2 says cluster_state ok", lambda: cluster_info(b2)["cluster_state"] == "ok")
        b2.client().set(key, "served")
        assert b2.client().get(key) == b"served"
    assert orphan_pids(str(tmp_path)) == []


# -- TP012 ---------------------------------------------------------------------------------------
def test_a_node_timeout_within_the_wan_round_trip_fails_over_a_healthy_primary_tp012(
    tmp_path: Path,
) -> None:
    """Every process stays up; only dc1's links get slow (600 ms one way, 1.2 s round trip)
    while cluster-node-timeout is 1000 ms: the others stop hearing a1 in time, mark it failed
    and promote its replica. A failover with no failure."""
    topology = redis_cluster(tmp_path / "rc", replicas=1, cluster_node_timeout_ms=1000)
    with Cluster(topology) as cluster:
        assert _owner_of_slot0(cluster, "b2") == "a1"
        for other in ("dc2", "dc3"):
            for route in cluster.routes_between("dc1", other):
                cluster.hub.set_fault(route, "both", "latency", latency_ms=600)  # type: ignore[union-attr]
        _until("a1's replica promoted", lambda: _owner_of_slot0(cluster, "b2") == "a2")
        assert all(h.is_running() for h in cluster.nodes.values())
        config = cluster.nodes["a1"].node.config_path
        slow = PreflightParams(link_latency_ms_max=600, replicas_expected=1)
        found = check_config_file(config, params=slow)
        assert "TP012" in ids(found)
        assert "TP012" not in ids(
            check_config_file(
                config, params=PreflightParams(link_latency_ms_max=30, replicas_expected=1)
            )
        )
    assert orphan_pids(str(tmp_path)) == []


def _write_until_refused(client: redis.Redis, key: str, started: float) -> list[tuple[str, float]]:
    """SET one new key after another until the node refuses; (key, seconds since ``started``)
    of every acknowledged one. Bounded by WAIT_S."""
    acked = []
    for i in range(100_000):
        if time.monotonic() - started > WAIT_S:
            break
        name = f"{key}:{i}"
        try:
            client.set(name, i)
        except (redis.RedisError, OSError):
            break
        acked.append((name, time.monotonic() - started))
        time.sleep(0.05)
    return acked


def test_an_isolated_primary_acknowledges_writes_past_min_replicas_max_lag_that_a_failover_loses(
    tmp_path: Path,
) -> None:
    """cluster-node-timeout 6 s above min-replicas-max-lag 1 s. dc1 is cut off with a1 and its
    local replica a1b: a1 keeps a1b's ACKs, so min-replicas-max-lag never stops it, and it
    writes on until it sees itself in the minority (node timeout). The other side promotes a2;
    after the heal a1 follows a2 and every write it acknowledged after the partition is gone:
    more than min-replicas-max-lag's worth. TP012 flags that config."""
    nodes = [
        {"name": "a1", "dc": "dc1", "shard": "s1", "role": "primary"},
        {"name": "a1b", "dc": "dc1", "shard": "s1", "role": "replica"},
        {"name": "a2", "dc": "dc2", "shard": "s1", "role": "replica"},
        {"name": "b2", "dc": "dc2", "shard": "s2", "role": "primary"},
        {"name": "b3", "dc": "dc3", "shard": "s2", "role": "replica"},
        {"name": "c3", "dc": "dc3", "shard": "s3", "role": "primary"},
        {"name": "c2", "dc": "dc2", "shard": "s3", "role": "replica"},
    ]
    topology = redis_cluster(
        tmp_path / "rc", nodes=nodes, cluster_node_timeout_ms=6000, min_replicas_max_lag_s=1
    )
    with Cluster(topology) as cluster:
        a1 = cluster.nodes["a1"].client()  # a client inside dc1: the partition does not cut it
        key = _key_for_shard(0)
        a1.set(key, "before")
        a1.execute_command("WAIT", 2, 5000)
        cluster.isolate("dc1")
        acked = _write_until_refused(a1, key, time.monotonic())
        late = [name for name, at_s in acked if at_s > 1 + 1]  # past max-lag, + 1 s of slack
        assert late, f"a1 stopped within min-replicas-max-lag: {acked[-1:]}"
        _until("a2 took over s1", lambda: _owner_of_slot0(cluster, "b2") == "a2")
        cluster.heal_all()
        _until("a1 follows a2", lambda: _owner_of_slot0(cluster, "a1") == "a2")
        a2 = cluster.nodes["a2"].client()
        assert a2.get(key) == b"before"
        assert [name for name in late if a2.exists(name)] == []  # acknowledged, then lost
        config = cluster.nodes["a1"].node.config_path
        found = check_config_file(config, params=PreflightParams(link_latency_ms_max=0))
        assert "TP012" in ids(found)
    assert orphan_pids(str(tmp_path)) == []


# -- the 2013 defects on cluster nodes ---------------------------------------------------------
def _cluster_node(make_node: NodeFactory, name: str, **directives: ConfigValue) -> RedisNode:
    return make_node(
        name,
        cluster_enabled="yes",
        cluster_config_file="nodes.conf",
        cluster_node_timeout=5000,
        cluster_require_full_coverage="no",
        **directives,
    )


def test_a_cluster_primary_restarted_with_aof_on_serves_its_slots_empty_and_tp001_catches_it(
    make_node: NodeFactory,
) -> None:
    """The 2013 restart on one shard: the node comes back with no data, yet nodes.conf still
    gives it its slots, so it answers for them, empty, and its replicas would copy that."""
    node = _cluster_node(make_node, "p", save="3600 1", appendonly="no")
    client = node.client()
    client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
    _until("one-node cluster ok", lambda: client.cluster("info")["cluster_state"] == "ok")
    client.set("{acct1}:balance", 100)
    client.save()
    node.stop()
    node.directives["appendonly"] = "yes"  # the 2013 procedure: enable AOF by editing the file
    node.write_config()
    found = check_config_file(node.config_path)
    assert "TP001" in ids(found)
    node.start(write_config=False)
    client = node.client()
    _until("cluster ok again", lambda: client.cluster("info")["cluster_state"] == "ok")
    assert client.dbsize() == 0 and client.get("{acct1}:balance") is None
    assert int(client.cluster("info")["cluster_slots_ok"]) == 16384  # still owns every slot


@pytest.mark.parametrize("role", ["primary", "replica"])
def test_replicaof_in_a_cluster_node_file_stops_it_starting_and_tp002_catches_it(
    make_node: NodeFactory, role: str
) -> None:
    node = _cluster_node(make_node, f"n-{role}", start=False, replicaof="127.0.0.1 1")
    with pytest.raises(ProcessError, match="exited with 1 during start"):  # config refused
        node.start(write_config=False)
    found = check_config_file(node.config_path, role=role)
    assert "TP002" in ids(found) and "TP011" not in ids(found)


def test_replicaof_self_on_a_cluster_node_is_tp003(make_node: NodeFactory) -> None:
    node = _cluster_node(make_node, "self", start=False)
    node.directives["replicaof"] = f"127.0.0.1 {node.port}"
    node.write_config()
    assert {"TP002", "TP003"} <= ids(check_config_file(node.config_path, role="replica"))


def test_a_cluster_replica_without_replicaof_is_not_tp011(make_node: NodeFactory) -> None:
    node = _cluster_node(make_node, "r", start=False, replicaof="no one")
    assert "TP011" not in ids(check_config_file(node.config_path, role="replica"))


# -- TP013 ---------------------------------------------------------------------------------------
def _failing_in_view_of(cluster: Cluster, asked: str) -> set[str]:
    by_front = {h.front: name for name, h in cluster.nodes.items()}
    return {str(by_front.get(v.address)) for v in cluster_nodes(cluster.nodes[asked]) if v.failing}


def test_when_a_shard_has_replicas_only_in_its_primary_dc_losing_that_dc_leaves_it_down(
    tmp_path: Path,
) -> None:
    """s1 = a1 + a1b, both in dc1. Cut dc1 off: the majority (b2, c3) marks a1 failed, and
    a1b too, so no node of s1 is left to promote; s1's keys are unreachable for everyone
    outside dc1 (MOVED to a1, whose routes are cut), while s2 serves. TP013 names s1."""
    nodes = [
        {"name": "a1", "dc": "dc1", "shard": "s1", "role": "primary"},
        {"name": "a1b", "dc": "dc1", "shard": "s1", "role": "replica"},
        {"name": "b2", "dc": "dc2", "shard": "s2", "role": "primary"},
        {"name": "b3", "dc": "dc3", "shard": "s2", "role": "replica"},
        {"name": "c3", "dc": "dc3", "shard": "s3", "role": "primary"},
        {"name": "c2", "dc": "dc2", "shard": "s3", "role": "replica"},
    ]
    topology = redis_cluster(
        tmp_path / "rc", nodes=nodes, clients_dc="dc2", cluster_node_timeout_ms=1000
    )
    assert [f.detail.split(":")[0] for f in check_topology(topology)] == ["Shard s1"]
    with Cluster(topology) as cluster:
        s1_key, s2_key = _key_for_shard(0), _key_for_shard(1)
        cluster.isolate("dc1")
        _until(
            "b2 marks a1 and a1b failed",
            lambda: {"a1", "a1b"} <= _failing_in_view_of(cluster, "b2"),
        )
        assert _owner_of_slot0(cluster, "b2") == "a1"  # nobody else can hold s1's slots
        host, port = cluster.front("a1")  # what MOVED names; this client sits in dc2
        outside = redis.Redis(host=host, port=port, password=cluster.password, socket_timeout=1.0)
        with (
            contextlib.closing(outside),
            pytest.raises((redis.TimeoutError, redis.ConnectionError)),
        ):
            outside.get(s1_key)
        b2 = cluster.nodes["b2"].client()
        b2.set(s2_key, "served")  # the other shards keep serving
        assert b2.get(s2_key) == b"served"
    assert orphan_pids(str(tmp_path)) == []


def test_a_shard_whose_replicas_share_its_primary_dc_is_tp013(tmp_path: Path) -> None:
    nodes = [
        {"name": "a1", "dc": "dc1", "shard": "s1", "role": "primary"},
        {"name": "a1b", "dc": "dc1", "shard": "s1", "role": "replica"},
        {"name": "b2", "dc": "dc2", "shard": "s2", "role": "primary"},
        {"name": "b3", "dc": "dc3", "shard": "s2", "role": "replica"},
        {"name": "c3", "dc": "dc3", "shard": "s3", "role": "primary"},
    ]
    findings = check_topology(redis_cluster(tmp_path, nodes=nodes))
    assert [(f.rule_id, f.detail.split(":")[0]) for f in findings] == [
        ("TP013", "Shard s1"),
        ("TP013", "Shard s3"),
    ]
    assert check_topology(load_topology(EXAMPLE)) == []


def test_preflight_topology_alone_checks_the_placement_and_exits_1_on_tp013(
    tmp_path: Path,
) -> None:
    bad = (
        EXAMPLE.read_text()
        .replace('name = "a2"\ndc = "dc2"', 'name = "a2"\ndc = "dc1"')
        .replace('name = "a3"\ndc = "dc3"', 'name = "a3"\ndc = "dc1"')
    )
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    result = CliRunner().invoke(preflight, ["--topology", str(path), "--json"])
    assert result.exit_code == 1, result.output
    assert [f["rule_id"] for f in json.loads(result.output)] == ["TP013"]
    good = CliRunner().invoke(preflight, ["--topology", str(EXAMPLE)])
    assert good.exit_code == 0, good.output


def test_preflight_latency_flag_states_the_wan_for_tp012(tmp_path: Path) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text(
        "cluster-enabled yes\ncluster-node-timeout 1000\ncluster-require-full-coverage no\n"
        "min-replicas-to-write 1\nmin-replicas-max-lag 10\nrequirepass x\nbind 127.0.0.1\n"
    )
    fast = CliRunner().invoke(preflight, ["--config", str(conf), "--latency-ms", "5", "--json"])
    slow = CliRunner().invoke(preflight, ["--config", str(conf), "--latency-ms", "300", "--json"])
    assert "TP012" not in {f["rule_id"] for f in json.loads(fast.output)}
    assert "TP012" in {f["rule_id"] for f in json.loads(slow.output)}
