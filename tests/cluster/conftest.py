"""Small real topologies for cluster tests: three data centers, one node each (redis-cluster
topologies: ``rc_topologies``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tally.ops.cluster import Cluster
from tally.ops.node import orphan_pids
from tally.ops.topology import Topology, parse_topology

FAST_SENTINEL = {
    "sentinel_down_after_ms": 1000,
    "sentinel_failover_timeout_ms": 3000,
    "diskless_sync_delay_s": 1,
    "write_rate_bytes_per_s": 200_000,
    "partition_s_max": 10,
}


def three_dc(base_dir: Path, *, profile: str = "hardened", **params: Any) -> Topology:
    dcs = ["dc1", "dc2", "dc3"]
    data = {
        "name": "t3",
        "profile": profile,
        "base_dir": str(base_dir),
        "params": {**FAST_SENTINEL, **params},
        "dc": [{"name": d} for d in dcs],
        "node": [
            {"name": "r1", "dc": "dc1", "role": "primary"},
            {"name": "r2", "dc": "dc2", "role": "replica"},
            {"name": "r3", "dc": "dc3", "role": "replica"},
        ],
        "sentinel": [{"dc": d} for d in dcs],
        "link": [
            {"between": ["dc1", "dc2"]},
            {"between": ["dc1", "dc3"]},
            {"between": ["dc2", "dc3"]},
        ],
    }
    return parse_topology(data, source="test")


def sentinel_url(cluster: Cluster) -> str:
    target = cluster.sentinel_target()
    hosts = ",".join(f"{h}:{p}" for h, p in target.sentinels)
    auth = f":{quote(target.password, safe='')}@" if target.password else ""
    return f"sentinel://{auth}{hosts}/{target.master_name}"


@pytest.fixture
def topology_factory(tmp_path: Path) -> Iterator[Callable[..., Topology]]:
    """Builds topologies under tmp_path; afterwards no redis-server may be left there."""
    yield lambda **kw: three_dc(tmp_path / "cluster", **kw)
    assert orphan_pids(str(tmp_path)) == [], "redis-server left running"
