"""redis-cluster topologies for tests: three shards over three data centers, fast timeouts;
and the two redis-server binaries every cluster test runs on."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from tally.ops.topology import Topology, parse_topology

FAST_CLUSTER = {
    "cluster_node_timeout_ms": 2000,
    "min_replicas_max_lag_s": 10,
    "diskless_sync_delay_s": 1,
    "write_rate_bytes_per_s": 200_000,
    "partition_s_max": 10,
}
DCS = ("dc1", "dc2", "dc3")


def cluster_nodes_spec(replicas: int) -> list[dict[str, str]]:
    """Shard k's primary in dc k, its ``replicas`` replicas in the next data centers."""
    nodes = []
    for k, shard in enumerate(("s1", "s2", "s3")):
        letter = "abc"[k]
        nodes.append({"name": f"{letter}{k + 1}", "dc": DCS[k], "shard": shard, "role": "primary"})
        for step in range(1, replicas + 1):
            dc = (k + step) % 3
            nodes.append(
                {"name": f"{letter}{dc + 1}", "dc": DCS[dc], "shard": shard, "role": "replica"}
            )
    return nodes


def redis_cluster(
    base_dir: Path,
    *,
    profile: str = "hardened",
    replicas: int = 1,
    nodes: list[dict[str, str]] | None = None,
    links: list[dict[str, Any]] | None = None,
    clients_dc: str = "",
    **params: Any,
) -> Topology:
    """Three shards over three data centers (``cluster_nodes_spec``), fast timeouts."""
    data: dict[str, Any] = {
        "kind": "redis-cluster",
        "name": "rc",
        "profile": profile,
        "base_dir": str(base_dir),
        "params": {**FAST_CLUSTER, **params},
        "dc": [{"name": d} for d in DCS],
        "node": nodes if nodes is not None else cluster_nodes_spec(replicas),
        "link": links or [{"between": list(pair)} for pair in itertools.combinations(DCS, 2)],
    }
    if clients_dc:
        data["clients_dc"] = clients_dc
    return parse_topology(data, source="test")
