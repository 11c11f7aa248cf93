"""Clusters of real Redis processes across simulated data centers (``tally cluster``).

Cluster(topology, profile=None, params=None, password=None, binary=None,
        sentinels=None, detach=False)
    .start() / .stop() / with Cluster(...) as c:
    .nodes[name] / .sentinels[name] -> ClusterNode (kill, pause, resume, stop, start,
                                        restart(directives=...), client(), live_role())
    .hub (ProxyHub or ProxyControl), .routes, .reach(src_dc, node)
    .partition(dc_a, dc_b, mode="drop") / .heal(dc_a, dc_b) / .isolate(dc) / .heal_all()
    .sentinel_addresses(), .primary(), .wait_replicas_in_sync(), .status()
    Cluster.attach(topology)  # what an earlier `tally cluster up` left running
"""

from tally.ops.cluster.core import Cluster, ClusterNode
from tally.ops.cluster.state import ClusterState, read_state, state_path

__all__ = ["Cluster", "ClusterNode", "ClusterState", "read_state", "state_path"]
