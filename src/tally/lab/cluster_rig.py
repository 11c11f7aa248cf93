"""The lab's processes on a Redis Cluster: three shards over three data centers, every node behind
its fronts (data and cluster bus), two ``tally serve`` processes pointed at it with a
``redis+cluster://`` URL.

Shard ``s1``'s primary ``a1`` is in dc1 with replicas ``a2`` (dc2) and ``a3`` (dc3); ``s2``'s
primary ``b2`` in dc2 (``b3``, ``b1``); ``s3``'s ``c3`` in dc3 (``c1``, ``c2``): every primary
has a replica in each other data center (preflight TP013), so one data center's loss never
leaves a shard without a replica that can win a failover. Replication, gossip, failure
detection and failover votes cross data centers only through the fault proxies, with the same
WAN latency and bandwidth cap as the Sentinel lab (``tally.lab.rig``).

Every setting the scenarios depend on is stated (``CLUSTER_LAB_PARAMS`` and
``tally.ops.profiles.cluster_node_directives``): hardened, ``cluster-node-timeout`` 3000 ms
(TP012: at most ``min-replicas-max-lag`` 10 s, above 4 x 30 ms x 2), ``cluster-require-full-coverage
no`` (one shard down stops only its slots), ``cluster-replica-validity-factor 3`` (the
profile's; why not 1: ``tally.ops.profiles``), ``repl-ping-replica-period 10``,
``cluster-allow-replica-migration no``, ``min-replicas-to-write 1`` with
``min-replicas-max-lag 10``; a replica wins a failover with the votes of the two other
primaries (a majority of three).

The ballast sits in database 0 (a cluster has no other) under a hash tag whose slot each
primary owns, ``lab:ballast:{<tag>}:<i>`` (tally's scans match ``tally:*`` only), loaded once
the first serve has initialised the deployment: serve initialises only an empty cluster.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from tally.errors import ProcessError
from tally.lab.checker import snapshot_store
from tally.lab.rig import (
    BALLAST_PIPELINE,
    BALLAST_VALUE_BYTES,
    LAB_PARAMS,
    NAMESPACE,
    SHARDS,
    SYNC_WAIT_S,
    Rig,
    RigSpec,
)
from tally.ops.ballast import incompressible
from tally.ops.cluster import ClusterNode
from tally.ops.cluster.formation import slot_ranges, wait_cluster_ok
from tally.ops.topology import Topology, parse_topology
from tally.store.keys import KeyLayout

DCS = ("dc1", "dc2", "dc3")
LATENCY_MS = {("dc1", "dc2"): 10, ("dc1", "dc3"): 30, ("dc2", "dc3"): 25}
#: shard -> (primary, replicas): the primary in its own data center, a replica in each other
SHARD_NODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "s1": ("a1", ("a2", "a3")),
    "s2": ("b2", ("b3", "b1")),
    "s3": ("c3", ("c1", "c2")),
}
CLUSTER_LAB_PARAMS: dict[str, Any] = {
    **{k: v for k, v in LAB_PARAMS.items() if not k.startswith("sentinel_")},
    # TP012: <= min_replicas_max_lag_s x 1000 (10 s) and > 4 x 30 ms x safety_factor 2;
    # a failover takes about this plus one election round (measured in the scenarios)
    "cluster_node_timeout_ms": 3000,
}
TAG_SEARCH_MAX = 100_000  # hash tags tried to find one in a slot range (a hit comes in dozens)
SLOT_MAP_FILE = "cluster.json"


def _dc_of(node: str) -> str:
    return f"dc{node[-1]}"


def cluster_lab_topology(base_dir: Path, spec: RigSpec) -> Topology:
    nodes = []
    for shard, (primary, replicas) in SHARD_NODES.items():
        nodes.append({"name": primary, "dc": _dc_of(primary), "shard": shard, "role": "primary"})
        nodes += [{"name": r, "dc": _dc_of(r), "shard": shard, "role": "replica"} for r in replicas]
    data = {
        "kind": "redis-cluster",
        "name": "lab-cluster",
        "profile": spec.profile,
        "base_dir": str(base_dir),
        "params": {**CLUSTER_LAB_PARAMS, **spec.params},
        "dc": [{"name": d} for d in DCS],
        "node": nodes,
        "link": [
            {"between": list(pair), "bandwidth_bytes_per_s": spec.wan_bytes_per_s,
             "latency_ms": ms}
            for pair, ms in LATENCY_MS.items()
        ],
    }  # fmt: skip
    return parse_topology(data, source="lab-cluster")


def tag_in(first: int, end: int, prefix: str = "lab") -> str:
    """A hash tag whose slot lies in ``[first, end)``."""
    for n in range(TAG_SEARCH_MAX):
        tag = f"{prefix}-{n}"
        if first <= key_slot(tag.encode()) < end:
            return tag
    raise ValueError(f"no hash tag in slots [{first}, {end})")


class ClusterRig(Rig):
    """``with ClusterRig(out_dir, spec) as rig:`` the cluster formed, ballast on every primary,
    the simulator running. Stopping is :meth:`Rig.stop`'s: every node, the proxies, the
    simulator."""

    topology_for = staticmethod(cluster_lab_topology)

    def start(self) -> ClusterRig:
        try:
            super().start()
            wait_cluster_ok(self.cluster, timeout_s=SYNC_WAIT_S)
        except BaseException:
            self.stop()
            raise
        return self

    # -- shards --------------------------------------------------------------------------------
    def shard_names(self) -> list[str]:
        return [s.name for s in self.topology.shards]

    def shard_slots(self, shard: str) -> tuple[int, int]:
        """The ``[first, end)`` slots formation gave ``shard`` (file order)."""
        index = self.shard_names().index(shard)
        return slot_ranges(len(self.topology.shards))[index]

    def shard_of_node(self, node: str) -> str:
        return self.topology.shard_of(node).name

    def shard_nodes(self, shard: str) -> list[str]:
        return [n.name for s in self.topology.shards if s.name == shard for n in s.nodes]

    def shard_primary(self, shard: str) -> ClusterNode | None:
        """The shard's node answering ROLE master now (after a failover: a former replica)."""
        for name in self.shard_nodes(shard):
            handle = self.nodes[name]
            if handle.is_running() and handle.live_role() == "master":
                return handle
        return None

    def slot_shard(self, slot: int) -> str:
        for shard in self.shard_names():
            first, end = self.shard_slots(shard)
            if first <= slot < end:
                return shard
        raise ValueError(f"slot {slot} out of range")

    def account_shards(self, account_ids: list[str]) -> dict[str, str]:
        """Which shard (Redis primary and its replicas) holds each account's balance."""
        layout = KeyLayout(NAMESPACE, SHARDS)
        return {a: self.slot_shard(key_slot(layout.account_key(a).encode())) for a in account_ids}

    def logical_shards(self) -> dict[str, str]:
        """tally's logical shard (``KeyLayout``: a transfer id's record, an account's balance)
        -> the cluster shard serving its slot."""
        layout = KeyLayout(NAMESPACE, SHARDS)
        return {str(k): self.slot_shard(key_slot(layout.epoch(k).encode())) for k in range(SHARDS)}

    # -- what the rig overrides ----------------------------------------------------------------
    def redis_url(self) -> str:
        """``redis+cluster://`` with every node's front: the serves learn the slot map from any."""
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"{h}:{p}" for h, p in self.cluster.startup_nodes())
        return f"redis+cluster://{auth}{hosts}"

    def current_primary(self) -> ClusterNode | None:
        """The first shard's primary (``cut_serve primary``: that shard's route)."""
        return self.shard_primary(self.shard_names()[0])

    def remote_dcs(self) -> list[str]:
        return list(DCS[1:])

    def wait_caught_up(self, timeout_s: float) -> None:
        """Every shard's replicas have processed their primary's stream up to its offset now."""
        targets: dict[str, int] = {}
        for shard in self.topology.shards:
            with contextlib.closing(self.nodes[shard.primary.name].client(socket_timeout=5.0)) as c:
                offset = int(c.info("replication").get("master_repl_offset", 0))
            targets.update({r.name: offset for r in shard.replicas})
        deadline = time.monotonic() + timeout_s
        behind = list(targets)
        while behind and time.monotonic() < deadline:
            behind = [n for n in behind if self._replica_offset(n) < targets[n]]
            if behind:
                time.sleep(0.1)
        if behind:
            raise ProcessError(f"replicas not caught up within {timeout_s}s: {', '.join(behind)}")

    def load_ballast(self) -> int:
        """Nothing at start: a cluster has database 0 only, and ``tally serve`` initialises
        only an EMPTY cluster (any key refuses it). :meth:`load_ballast_after_init`."""
        return 0

    def load_ballast_after_init(self) -> int:
        """``dataset_bytes`` of incompressible ballast on every shard's primary (each shard's
        full sync has real work to do), in database 0 under a tag of the primary's own slots,
        once tally's deployment is initialised; then every replica is caught up."""
        count = self.spec.dataset_bytes // BALLAST_VALUE_BYTES
        value = incompressible(BALLAST_VALUE_BYTES)
        for shard in self.topology.shards:
            tag = tag_in(*self.shard_slots(shard.name), prefix="ballast")
            with contextlib.closing(self.client(shard.primary.name, socket_timeout=30.0)) as c:
                for start in range(0, count, BALLAST_PIPELINE):
                    with c.pipeline(transaction=False) as pipe:
                        for i in range(start, min(count, start + BALLAST_PIPELINE)):
                            pipe.set(f"lab:ballast:{{{tag}}}:{i}", value)
                        pipe.execute()
        self.wait_caught_up(SYNC_WAIT_S)
        return count * len(self.topology.shards)

    # -- artefacts -------------------------------------------------------------------------------
    def write_layout(self, out: Path, account_ids: list[str]) -> None:
        """``cluster.json``: each shard's nodes and slots, and the shard of each account's
        balance, for the figures that judge one shard's fault (read from files, like the
        checker)."""
        layout = {
            "shards": {s: {"nodes": self.shard_nodes(s), "slots": list(self.shard_slots(s))}
                       for s in self.shard_names()},
            "accounts": self.account_shards(account_ids),
            "logical_shards": self.logical_shards(),
        }  # fmt: skip
        (out / SLOT_MAP_FILE).write_text(json.dumps(layout, indent=1))

    def snapshot_store(self, out: Path) -> None:
        """store.json from EVERY shard: each running primary's keys read on that primary (its
        real address, SCAN: it holds only its own slots), merged. A transfer's record can sit in
        two shards (reserved in the id's shard, recorded beside the balance in the account's):
        a final record (code 0) wins over a pending one."""
        merged: dict[str, Any] = {"namespace": NAMESPACE, "accounts": {}, "tx": {},
                                  "epoch_keys": 0, "shards": {}}  # fmt: skip
        errors: dict[str, str] = {}
        for shard in self.shard_names():
            primary = self.shard_primary(shard)
            if primary is None:
                errors[shard] = "no primary at the end"
                continue
            try:
                with contextlib.closing(primary.client(socket_timeout=10.0)) as c:
                    snap = snapshot_store(c, NAMESPACE)
            except (redis.RedisError, OSError) as exc:
                errors[shard] = f"{type(exc).__name__}: {exc}"
                continue
            merged["accounts"].update(snap["accounts"])
            for tid, record in snap["tx"].items():
                if _code(record) == "0" or tid not in merged["tx"]:
                    merged["tx"][tid] = record
            merged["epoch_keys"] += snap["epoch_keys"]
            merged["shards"][shard] = {"node": primary.name, "accounts": len(snap["accounts"]),
                                       "epoch_keys": snap["epoch_keys"]}  # fmt: skip
        merged["primaries"] = [v["node"] for v in merged["shards"].values()]
        merged["node"] = ",".join(merged["primaries"])
        if errors:
            merged["errors"] = errors
        (out / "store.json").write_text(json.dumps(merged))


def _code(record: str) -> str:
    parts = record.split("|")
    return parts[4] if len(parts) >= 5 else ""
