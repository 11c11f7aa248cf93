"""Parsing ``kind = "redis-cluster"`` topologies and the directives their nodes get."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from tally.errors import ConfigError
from tally.ops.binary import RedisBinary
from tally.ops.cluster import Cluster
from tally.ops.cluster.formation import SLOTS, parse_cluster_nodes, slot_ranges
from tally.ops.node import orphan_pids
from tally.ops.profiles import ClusterAnnounce, cluster_node_directives
from tally.ops.topology import load_topology, parse_topology

from .rc_topologies import cluster_nodes_spec, redis_cluster

EXAMPLE = Path(__file__).parents[2] / "examples" / "topology-cluster-3dc.toml"


def _cluster(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": "redis-cluster",
        "base_dir": "/tmp/x",
        "dc": [{"name": "dc1"}, {"name": "dc2"}, {"name": "dc3"}],
        "node": cluster_nodes_spec(1),
        "link": [
            {"between": ["dc1", "dc2"]},
            {"between": ["dc1", "dc3"]},
            {"between": ["dc2", "dc3"]},
        ],
    }
    data.update(overrides)
    return data


def test_the_example_cluster_has_three_shards_each_with_a_replica_in_both_other_dcs() -> None:
    topology = load_topology(EXAMPLE)
    assert topology.is_cluster
    assert [s.name for s in topology.shards] == ["s1", "s2", "s3"]
    for shard in topology.shards:
        assert {r.dc for r in shard.replicas} == set(topology.dcs) - {shard.primary.dc}


def test_a_cluster_has_no_single_primary_to_hand_out() -> None:
    topology = parse_topology(_cluster())
    with pytest.raises(ConfigError, match="one primary per shard"):
        _ = topology.primary
    assert [p.name for p in topology.primaries] == ["a1", "b2", "c3"]
    assert topology.client_dc == "dc1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sentinel": [{"dc": "dc1"}, {"dc": "dc2"}, {"dc": "dc3"}]}, "no \\[\\[sentinel\\]\\]"),
        ({"node": cluster_nodes_spec(1)[:4]}, "needs at least 3"),
        ({"node": [{**n, "role": "replica"} for n in cluster_nodes_spec(1)]}, "0 primaries"),
        (
            {"node": [{k: v for k, v in n.items() if k != "shard"} for n in cluster_nodes_spec(1)]},
            "shard",
        ),
        ({"kind": "replicated"}, "kind is not 'redis-cluster'"),
        ({"kind": "mesh"}, "kind = 'mesh'"),
    ],
)
def test_a_malformed_cluster_topology_is_refused_with_the_fix(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_topology(_cluster(**change))


def test_slot_ranges_cover_every_slot_once() -> None:
    for shards in (1, 3, 7):
        ranges = slot_ranges(shards)
        assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_cluster_nodes_lines_of_both_versions_parse() -> None:
    text = (
        "aaa 127.0.1.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [5461->-bbb]\n"
        "bbb 127.0.2.1:30002@40002,host2 slave aaa 0 1700000000000 1 connected\n"
        "ccc 127.0.3.1:30003@40003 master,fail - 0 0 3 disconnected 10922-16383 16000\n"
    )
    a, b, c = parse_cluster_nodes(text)
    assert (a.address, a.bus_port, a.slot_count) == (("127.0.1.1", 30001), 40001, 5461)
    assert (b.master_id, b.bus_port, b.is_primary) == ("aaa", 40002, False)
    assert c.failing and not c.connected and c.slots == ((10922, 16383), (16000, 16000))


@pytest.mark.parametrize("version", [(6, 2, 14), (7, 0, 15)])
def test_cluster_directives_state_every_setting_and_only_names_the_version_knows(
    version: tuple[int, int, int],
) -> None:
    binary = RedisBinary(Path("/x/redis-server"), version, "path")
    announce = ClusterAnnounce("127.0.1.1", 41000, 42000)
    hardened = cluster_node_directives("hardened", binary, 21000, announce)
    assert hardened["cluster-require-full-coverage"] == "no"
    assert hardened["cluster-announce-bus-port"] == 42000
    assert ("cluster-port" in hardened) == (version >= (7, 0, 0))
    assert (
        cluster_node_directives("2013", binary, 21000, announce)["cluster-require-full-coverage"]
        == "yes"
    )


def test_a_hardened_cluster_with_a_shard_that_could_never_write_is_refused_before_start(
    tmp_path: Path,
) -> None:
    topology = redis_cluster(tmp_path / "rc", replicas=0)  # min_replicas_to_write stays 1
    with pytest.raises(ConfigError, match="shard s1 has 0 replica"):
        Cluster(topology)
    assert not (tmp_path / "rc").exists()


def test_up_on_a_base_dir_of_an_earlier_cluster_is_refused_before_starting(tmp_path: Path) -> None:
    topology = redis_cluster(tmp_path / "rc")
    (tmp_path / "rc" / "b2").mkdir(parents=True)
    (tmp_path / "rc" / "b2" / "nodes.conf").write_text("an earlier run\n")
    with pytest.raises(ConfigError, match=r"earlier cluster's nodes.conf \(b2\)"):
        Cluster(topology).start()
    assert orphan_pids(str(tmp_path)) == []
