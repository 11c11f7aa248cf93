"""Clusters of real Redis processes across simulated data centers (``tally cluster``).

Cluster(topology, profile=None, params=None, password=None, binary=None,
        sentinels=None, detach=False)
    .start() / .stop() / with Cluster(...) as c:
    .nodes[name] / .sentinels[name] -> ClusterNode (kill, pause, resume, stop, start,
                                        restart(directives=...), client(), live_role())
    .hub (ProxyHub or ProxyControl), .routes, .reach(src_dc, node)
    .partition(dc_a, dc_b, mode="drop") / .heal(dc_a, dc_b) / .isolate(dc) / .heal_all()
    .sentinel_addresses(), .primary(), .primaries(), .wait_replicas_in_sync(), .status()
    Cluster.attach(topology)  # what an earlier `tally cluster up` left running

A ``kind = "redis-cluster"`` topology is formed into a Redis Cluster on start
(``formation.form_cluster``); each node handle then also has ``.bus_front``. Reading it back:
``formation.cluster_nodes(handle)`` (parsed CLUSTER NODES), ``formation.cluster_info(handle)``,
``formation.wait_cluster_ok(cluster, names=..., all_connected=...)``,
``formation.slot_ranges(shards)``, ``status.shard_status(cluster)`` (slots per primary and the
``store_epoch`` place the store part fills).
"""

from tally.ops.cluster.core import Cluster, ClusterNode
from tally.ops.cluster.state import ClusterState, read_state, state_path

__all__ = ["Cluster", "ClusterNode", "ClusterState", "read_state", "state_path"]
