"""What ``tally cluster status`` shows: roles, replication offsets and lag, links, Sentinels;
for a redis-cluster topology also its shards (slots per primary, replicas, epochs)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.crc import key_slot

from tally.errors import TallyError
from tally.ops.cluster.admission import EPOCH_PATTERN, is_admitted
from tally.ops.cluster.core import Cluster, ClusterNode
from tally.ops.cluster.formation import ClusterNodeView, cluster_info, cluster_nodes
from tally.ops.cluster.procs import command


def _where(handle: ClusterNode) -> dict[str, Any]:
    """The real address (operators) and the front (everyone else: replicas, Sentinels, clients)."""
    front = f"{handle.front[0]}:{handle.front[1]}" if handle.front else None
    return {"dc": handle.dc, "address": f"{handle.node.host}:{handle.port}", "front": front}


def node_status(handle: ClusterNode) -> dict[str, Any]:
    out: dict[str, Any] = {
        **_where(handle),
        "port": handle.port,
        "pid": handle.pid,
        "running": handle.is_running(),
    }
    try:
        with contextlib.closing(handle.client(socket_timeout=1.0)) as c:
            info = c.info("replication")
            out["keys"] = int(c.dbsize())
            admitted = is_admitted(c)  # hardened cluster nodes: the sync quarantine
    except (redis.RedisError, OSError) as exc:
        return out | {"role": "down", "error": str(exc)}
    if admitted is not None:
        out["sync"] = "admitted" if admitted else "QUARANTINED"
    out["role"] = info.get("role")
    out["offset"] = int(info.get("master_repl_offset", 0))
    if info.get("role") == "slave":
        out["master"] = f"{info.get('master_host')}:{info.get('master_port')}"
        out["link"] = info.get("master_link_status")
        out["offset"] = int(info.get("slave_repl_offset", 0))
    else:
        out["replicas"] = int(info.get("connected_slaves", 0))
    return out


def sentinel_status(handle: ClusterNode, master_name: str) -> dict[str, Any]:
    out: dict[str, Any] = {**_where(handle), "port": handle.port, "pid": handle.pid}
    try:
        with contextlib.closing(handle.client(socket_timeout=1.0)) as c:
            addr = command(c, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name)
    except (redis.RedisError, OSError) as exc:
        return out | {"up": False, "error": str(exc)}
    primary = f"{addr[0].decode()}:{addr[1].decode()}" if addr else None
    return out | {"up": True, "primary": primary}


def link_status(cluster: Cluster) -> dict[str, Any]:
    if cluster.hub is None:
        return {}
    try:
        raw = cluster.hub.status()
    except TallyError as exc:
        return {"error": str(exc)}
    out: dict[str, Any] = {}
    for name, route in cluster.routes.items():
        entry = raw.get(name, {})
        faults = {d: f for d, f in entry.get("faults", {}).items() if f}
        out[name] = {
            "pair": route.pair,
            "listen": list(route.listen),
            "faults": faults,
            "connections_open": entry.get("stats", {}).get("connections_open"),
        }
    return out


def cluster_status(cluster: Cluster) -> dict[str, Any]:
    nodes = {name: node_status(h) for name, h in cluster.nodes.items()}
    primaries = [n for n, s in nodes.items() if s.get("role") == "master"]
    # Lag in bytes of replication stream behind its own primary, found by the front it names.
    offsets = {nodes[n]["front"]: nodes[n]["offset"] for n in primaries}
    for status in nodes.values():
        if status.get("role") == "slave" and status.get("master") in offsets:
            status["lag_bytes"] = max(0, offsets[status["master"]] - status["offset"])
    out: dict[str, Any] = {
        "kind": cluster.topology.kind,
        "profile": cluster.topology.profile,
        "primaries": primaries,
        "nodes": nodes,
        "sentinels": {
            n: sentinel_status(h, cluster.topology.master_name)
            for n, h in cluster.sentinels.items()
        },
        "links": link_status(cluster),
    }
    if cluster.topology.is_cluster:
        out["cluster"] = shard_status(cluster)
    return out


def shard_status(cluster: Cluster) -> dict[str, Any]:
    """The cluster as the first reachable node sees it, per shard of the topology (``s1``...;
    a failover changes the primary, not the shard): the primary serving its slots now, the
    slots, the replicas and Redis's ``config_epoch``; ``store_epochs``: the tally epoch key of
    every logical shard this primary holds (``namespace:{namespace.k}:epoch`` -> value, found by a
    bounded SCAN, ``store_epoch_scan``), and ``store_epoch``: their one value when they agree,
    ``"mixed"`` when not, None when the primary holds none (empty: restarted empty, or never
    initialised) or could not be asked."""
    by_front = {h.front: name for name, h in cluster.nodes.items() if h.front}
    shard_of = {n.name: n.shard for n in cluster.topology.nodes}
    for name, handle in cluster.nodes.items():
        try:
            views = cluster_nodes(handle)
            info = cluster_info(handle)
        except (redis.RedisError, OSError):
            continue
        shards = _shards(views, by_front, shard_of)
        for shard in shards.values():
            primary = cluster.nodes.get(shard["primary"])
            found = store_epochs(primary) if primary is not None else None
            shard["store_epochs"] = found
            shard["store_epoch"] = _one_epoch(found)
        return {
            "startup_nodes": [f"{h}:{p}" for h, p in cluster.startup_nodes()],
            "seen_by": name,
            "state": info.get("cluster_state"),
            "slots_ok": int(info.get("cluster_slots_ok", 0)),
            "shards": shards,
        }
    return {"seen_by": None, "state": "unreachable", "slots_ok": 0, "shards": {}}


def _shards(
    views: list[ClusterNodeView], by_front: dict[tuple[str, int], str], shard_of: dict[str, str]
) -> dict[str, dict[str, Any]]:
    def name(view: ClusterNodeView) -> str:
        return by_front.get(view.address, f"{view.address[0]}:{view.address[1]}")

    shards: dict[str, dict[str, Any]] = {}
    for view in sorted(views, key=lambda v: v.slots[0] if v.slots else (SLOTS_END, 0)):
        if not view.is_primary or not view.slots:
            continue
        primary = name(view)
        shards[shard_of.get(primary, primary)] = {
            "primary": primary,
            "slots": view.slot_count,
            "ranges": [f"{a}-{b}" if a != b else str(a) for a, b in view.slots],
            "replicas": [name(v) for v in views if v.master_id == view.node_id],
            "failing": view.failing,
            "config_epoch": view.config_epoch,
        }
    return shards


SLOTS_END = 16384
SCAN_COUNT = 1000
SCAN_ROUNDS_MAX = 200  # bounded: at most 200 x 1000 keys looked at per primary
EPOCH_KEYS_MAX = 1024  # a layout has at most this many shards


def store_epochs(handle: ClusterNode) -> dict[str, str | None] | None:
    """The epoch keys one primary holds (key -> value), by a bounded SCAN; None when the node
    cannot be asked."""
    found: dict[str, str | None] = {}
    try:
        with contextlib.closing(handle.client(socket_timeout=2.0)) as c:
            cursor = 0
            for _ in range(SCAN_ROUNDS_MAX):
                cursor, keys = c.scan(cursor, match=EPOCH_PATTERN, count=SCAN_COUNT)
                for key in keys:
                    value = c.get(key)
                    found[_text(key)] = None if value is None else _text(value)
                if cursor == 0 or len(found) >= EPOCH_KEYS_MAX:
                    break
    except (redis.RedisError, OSError):
        return None
    return dict(sorted(found.items()))


def _one_epoch(found: dict[str, str | None] | None) -> str | None:
    values = set((found or {}).values())
    if not values:
        return None
    return next(iter(values)) if len(values) == 1 else "mixed"


def compare_ledger_epochs(
    view: dict[str, Any], namespace: str, ledger_values: Sequence[str]
) -> list[str]:
    """Beside each primary's epoch keys (``store_epochs``), the ledger's view: ``ledger_epochs``
    (the epoch key of every logical shard whose slot this primary serves -> the value the
    ledger says it must hold: the shard's own epoch after a one-shard rebuild, else the
    deployment's) and ``epoch_mismatch`` (the keys whose value differs, a missing key
    included: a primary restarted empty shows all of its shards). Returns every such key."""
    keys = [f"{namespace}:{{{namespace}.{k}}}:epoch" for k in range(len(ledger_values))]
    slots = [key_slot(k.encode()) for k in keys]
    mismatched: list[str] = []
    for shard in view.get("shards", {}).values():
        found: dict[str, str | None] = shard.get("store_epochs") or {}
        ranges = [_range(r) for r in shard.get("ranges", [])]
        expected = {
            key: ledger_values[k]
            for k, key in enumerate(keys)
            if any(a <= slots[k] <= b for a, b in ranges)
        }
        shard["ledger_epochs"] = expected
        shard["epoch_mismatch"] = sorted(k for k, v in expected.items() if found.get(k) != v)
        mismatched += shard["epoch_mismatch"]
    return sorted(mismatched)


def _range(text: str) -> tuple[int, int]:
    a, _, b = text.partition("-")
    return int(a), int(b or a)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
