"""A ``kind = "redis-cluster"`` topology run for real: formed by tally on the embedded 6.2 and
the system 7.x binary, every node (data and cluster bus) behind its fronts in the fault proxy,
and one shard's primary failing over while the other shards keep serving."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from tally.ops.binary import RedisBinary
from tally.ops.cluster import Cluster, read_state
from tally.ops.cluster.formation import SLOTS, cluster_info, cluster_nodes, wait_cluster_ok
from tally.ops.cluster.status import cluster_status
from tally.ops.node import orphan_pids
from tally.ops.preflight import PreflightParams, check_live, has_errors
from tally.ops.topology import Topology
from tests.binaries import BINARIES, binary_id

from .rc_topologies import redis_cluster

EXAMPLE = Path(__file__).parents[2] / "examples" / "topology-cluster-3dc.toml"
CLUSTER_CLI = "from tally.cli.cluster_cmd import cluster; cluster()"
FAILOVER_TIMEOUT_S = 60.0


def _client(cluster: Cluster) -> RedisCluster:
    """redis-py's cluster client, told only one front: it learns the rest from CLUSTER SLOTS."""
    host, port = cluster.front(cluster.topology.shards[0].primary.name)
    return RedisCluster(
        host=host,
        port=port,
        password=cluster.password,
        socket_timeout=5.0,
        socket_connect_timeout=2.0,
    )


def _key_in(cluster: Cluster, client: RedisCluster, primary: str) -> str:
    """A key whose slot belongs to the shard ``primary`` was formed with."""
    owner = cluster.front(primary)
    for i in range(10_000):  # bounded: 3 shards, a hit comes within a few keys
        key = f"k{i}"
        node = client.get_node_from_key(key)
        if (node.host, node.port) == owner:
            return key
    raise AssertionError(f"no key for {primary}")


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_tally_forms_a_cluster_behind_the_fronts_and_stops_clean(
    binary: RedisBinary, tmp_path: Path
) -> None:
    topology = redis_cluster(tmp_path / "rc")
    with Cluster(topology, binary=binary) as cluster:
        fronts = {h.front for h in cluster.nodes.values()}
        bus_fronts = {h.bus_front[1] for h in cluster.nodes.values() if h.bus_front}
        for handle in cluster.nodes.values():
            info = cluster_info(handle)
            assert (info["cluster_state"], int(info["cluster_slots_ok"])) == ("ok", SLOTS)
            views = cluster_nodes(handle)
            assert {v.address for v in views} == fronts  # known by fronts only
            assert {v.bus_port for v in views} == bus_fronts
        shards = cluster_status(cluster)["cluster"]["shards"]
        assert {k: s["primary"] for k, s in shards.items()} == {"s1": "a1", "s2": "b2", "s3": "c3"}
        assert sum(s["slots"] for s in shards.values()) == SLOTS
        assert {s["store_epoch"] for s in shards.values()} == {None}  # the store part's place
        client = _client(cluster)
        with contextlib.closing(client):
            assert {(n.host, n.port) for n in client.get_nodes()} <= fronts
            for primary in ("a1", "b2", "c3"):
                key = _key_in(cluster, client, primary)
                client.set(key, primary)
                assert client.get(key) == primary.encode()
                cluster.nodes[primary].client().execute_command("WAIT", 1, 5000)
        # What tally generated passes live preflight, primaries and replicas.
        params = PreflightParams.for_topology(topology)
        for handle in cluster.nodes.values():
            findings = check_live(handle.client(), role=handle.role, params=params)
            assert not has_errors(findings), [f.detail for f in findings]
        # Gossip crossed the data centers through the bus routes, not around them.
        stats = cluster.hub.status()  # type: ignore[union-attr]
        assert stats["dc2-to-a1-bus"]["stats"]["bytes_upstream"] > 0
        assert stats["dc1-to-b2-bus"]["stats"]["bytes_upstream"] > 0
    assert orphan_pids(str(tmp_path)) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLUSTER_CLI, *args], capture_output=True, text=True, timeout=180
    )


def test_the_example_cluster_comes_up_shows_slots_per_primary_and_goes_down_from_the_cli(
    tmp_path: Path,
) -> None:
    base = ["--topology", str(EXAMPLE), "--base-dir", str(tmp_path / "ex")]
    up = _cli("up", *base, "--json")
    try:
        assert up.returncode == 0, up.stderr
        assert len(orphan_pids(str(tmp_path))) == 9  # outlived the CLI process
        status = _cli("status", *base, "--json")
        assert status.returncode == 0, status.stderr
        view = json.loads(status.stdout)["cluster"]
        assert (view["state"], view["slots_ok"]) == ("ok", SLOTS)
        assert len(view["startup_nodes"]) == 9  # the fronts a cluster client starts from
        assert {k: len(s["replicas"]) for k, s in view["shards"].items()} == {
            "s1": 2,
            "s2": 2,
            "s3": 2,
        }
        text = _cli("status", *base)
        assert "shard s1     primary=a1       slots=5461  0-5460" in text.stdout
        # the sync quarantine: every node was judged at its start and let in (nothing to lose)
        assert {n["sync"] for n in json.loads(status.stdout)["nodes"].values()} == {"admitted"}
        admit = _cli("admit", *base, "--json")
        assert admit.returncode == 0, admit.stderr
        judged = json.loads(admit.stdout)
        assert len(judged) == 9 and all(a["admitted"] for a in judged)
    finally:
        down = _cli("down", *base)
    assert down.returncode == 0, down.stderr
    assert orphan_pids(str(tmp_path)) == []
    assert read_state(tmp_path / "ex") is None


def _owner_of_first_slot(cluster: Cluster, asked: str) -> tuple[str | None, bool]:
    """(the node that serves slot 0 in ``asked``'s view, by name; is it flagged failing)."""
    by_front = {h.front: name for name, h in cluster.nodes.items()}
    for view in cluster_nodes(cluster.nodes[asked]):
        if view.is_primary and any(first == 0 for first, _ in view.slots):
            return by_front.get(view.address), view.failing
    return None, False


def _wait_promoted(cluster: Cluster, dead: str, asked: str) -> str:
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while time.monotonic() < deadline:
        owner, _ = _owner_of_first_slot(cluster, asked)
        if owner is not None and owner != dead:
            return owner
        time.sleep(0.2)
    raise AssertionError(f"no replica of {dead} took its slots within {FAILOVER_TIMEOUT_S}s")


def _set_with_retry(client: RedisCluster, key: str, value: str) -> None:
    """A promoted primary refuses writes (NOREPLICAS) until its other replica follows it;
    bounded."""
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while True:
        try:
            client.set(key, value)
            return
        except (redis.ResponseError, redis.ConnectionError) as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{key} still refused: {exc}") from exc
            time.sleep(0.2)


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_a_killed_shard_primary_is_replaced_by_its_replica_while_other_shards_serve(
    binary: RedisBinary, tmp_path: Path
) -> None:
    topology: Topology = redis_cluster(tmp_path / "rc", replicas=2)
    with (
        Cluster(topology, binary=binary) as cluster,
        contextlib.closing(_client(cluster)) as client,
    ):
        keys = {p: _key_in(cluster, client, p) for p in ("a1", "b2", "c3")}
        for primary, key in keys.items():
            client.set(key, "before")
            cluster.nodes[primary].client().execute_command("WAIT", 2, 5000)
        cluster.nodes["a1"].kill()
        for primary in ("b2", "c3"):  # no waiting for the failover: they never stopped
            client.set(keys[primary], "during")
            assert client.get(keys[primary]) == b"during"
        new_owner = _wait_promoted(cluster, "a1", asked="b2")
        assert new_owner in ("a2", "a3")
        survivors = [n for n in cluster.nodes if n != "a1"]
        wait_cluster_ok(cluster, names=survivors, all_connected=False)
        assert client.get(keys["a1"]) == b"before"  # acknowledged by WAIT: not lost
        _set_with_retry(client, keys["a1"], "after")
        assert client.get(keys["a1"]) == b"after"
        shards = cluster_status(cluster)["cluster"]["shards"]
        assert shards["s1"]["primary"] == new_owner and shards["s1"]["failing"] is False
        cluster.nodes["a1"].start()  # back with its nodes.conf: it follows the new primary
        wait_cluster_ok(cluster)
        shards = cluster_status(cluster)["cluster"]["shards"]
        assert shards["s1"]["primary"] == new_owner and "a1" in shards["s1"]["replicas"]
    assert orphan_pids(str(tmp_path)) == []
