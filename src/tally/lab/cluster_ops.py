"""The timeline's actions and the sampler on a Redis Cluster rig (``tally.lab.cluster_rig``).

:class:`ClusterOperator` keeps every action of :class:`tally.lab.timeline.Operator` (kill,
start, pause, restart, heal, the serves' faults, the gateway's) and changes or adds:

    fix_config(node)             the original config back, no ``replicaof`` (nodes.conf holds
                                 the role); hardened: the original AOF brings the data back
    billing("rebuild_shard:<shard>")  POST /v1/admin/rebuild {"force": false, "shard": K} for
                                 each of tally's logical shards the cluster shard serves (the
                                 first answer a promotion: that was all of them)
    restart(node, mutation="incident")  the 2013 operator's restart on one cluster node:
                                 ``appendonly yes`` pointing at an AOF that does not exist, so
                                 it comes back EMPTY; no ``replicaof`` (a cluster node refuses
                                 to start with one: its role lives in nodes.conf, which it keeps,
                                 so it comes back as the primary of its slots)
    partition_shard_replicas(shard, mode)   cut every replica of one shard from that shard's
                                 primary (the routes from the replicas' data centers to the
                                 primary's data front), the other shards untouched: the
                                 incident-28 blip on one shard
    write_load(bytes_per_s, seconds, node)  extra writes on one node (a shard's primary), in
                                 database 0 under a hash tag of that shard's slots

:class:`ClusterMonitor` samples like :class:`tally.lab.monitor.Monitor` (roles, links, sync
counters, DBSIZE) and counts tally's epoch keys each node HOLDS: one ``EXISTS`` per key after
``READONLY`` (a replica answers for its primary's slots), a key of another shard's slots
answers ``MOVED`` and counts 0. A multi-key ``EXISTS`` would be refused (CROSSSLOT).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import redis
from redis.crc import key_slot

from tally.lab.cluster_rig import ClusterRig, tag_in
from tally.lab.monitor import Monitor, node_figures
from tally.lab.rig import NAMESPACE, SHARDS
from tally.lab.timeline import Operator, paced_writes
from tally.ops.ballast import incompressible
from tally.ops.cluster.procs import command
from tally.ops.node import ConfigValue
from tally.store.keys import KeyLayout

LOAD_KEYS = 20_000


class ClusterOperator(Operator):
    rig: ClusterRig

    def incident_mutation(self, node: str) -> dict[str, ConfigValue]:
        mutation = super().incident_mutation(node)
        mutation.pop("replicaof", None)
        return mutation

    def do_billing(self, action: str) -> str:
        """``rebuild_shard:<shard>``: the operator rebuilds one cluster shard from the ledger,
        one admin call per logical shard it serves (``{"force": false, "shard": K}``); any
        other action is the billing's own."""
        kind, _, shard = action.partition(":")
        if kind != "rebuild_shard":
            return super().do_billing(action)
        admin = getattr(self.billing, "_admin", None)
        if admin is None:
            return f"{action}: {self.billing.name} has no admin API"
        answers = []
        for k in logical_shards_of(self.rig, shard):
            status, body = admin("POST", "/v1/admin/rebuild", {"force": False, "shard": k})
            code = body.get("code", "") if isinstance(body, dict) else str(body)[:80]
            kind = body.get("kind", "") if isinstance(body, dict) else ""  # rebuild | promotion
            answers.append(f"{k}: {status}{' ' + code if code else ''}{' ' + kind if kind else ''}")
            if status != 200 and len(answers) == 1 and isinstance(body, dict):
                answers[0] += f" ({str(body.get('detail') or body)[:160]})"
            if kind == "promotion":  # every logical shard of that primary is back with it
                answers.append("promoted: the other logical shards came back with it")
                break
        return f"rebuild of {shard}, logical shard by logical shard: {'; '.join(answers)}"

    def do_fix_config(self, node: str) -> str:
        """The operator's repair on a cluster node: its original config back (no ``replicaof``:
        its role is in nodes.conf). Hardened, its original AOF is intact on disk: it comes back
        with its data and epoch keys, as its shard's primary if nobody failed it over (its
        replicas then resync from it), else as a replica of the newer primary."""
        handle = self.rig.nodes[node]
        self._restart_with(handle, dict(self.rig.original_directives[node]), save=False)
        return f"{node}: config fixed; role {handle.live_role()}"

    def do_partition_shard_replicas(self, shard: str, mode: str = "refuse") -> str:
        hub = self.rig.cluster.hub
        assert hub is not None
        primary = self.rig.shard_primary(shard)
        if primary is None:
            return f"{shard} has no primary: nothing to cut"
        cut = []
        for name in self.rig.shard_nodes(shard):
            dc = self.rig.nodes[name].dc
            if name == primary.name or dc == primary.dc:
                continue
            route = self.rig.cluster.route_name(dc, primary.name)
            hub.set_fault(route, "both", "partition", mode=mode)
            cut.append(route)
        return f"replicas of {shard} cut from {primary.name} ({mode}): {', '.join(cut)}"

    def do_write_load(self, bytes_per_s: int, seconds: float, value_bytes: int = 2000,
                      node: str = "") -> str:  # fmt: skip
        if not node:
            raise ValueError("write_load on a cluster names the node (a shard's primary)")
        thread = threading.Thread(
            target=self._load_node, args=(node, bytes_per_s, seconds * self.scale, value_bytes),
            name="lab-write-load", daemon=True,
        )  # fmt: skip
        thread.start()
        self._load_threads.append(thread)
        return f"writing {bytes_per_s} B/s on {node} for {seconds * self.scale:.1f}s"

    def _load_node(self, node: str, bytes_per_s: int, seconds: float, value_bytes: int) -> None:
        per_s = max(1, bytes_per_s // value_bytes)
        value = incompressible(value_bytes, seed=value_bytes)
        tag = tag_in(*self.rig.shard_slots(self.rig.shard_of_node(node)), prefix="load")
        with contextlib.closing(self.rig.client(node, socket_timeout=1.0)) as c:
            paced_writes(
                c, per_s, seconds, self.stop, value, lambda i: f"lab:load:{{{tag}}}:{i % LOAD_KEYS}"
            )


class ClusterMonitor(Monitor):
    def _sample(self, name: str) -> dict[str, Any]:
        try:
            client = self._client("info", name, 0.5)
            with client.pipeline(transaction=False) as pipe:
                command(pipe, "READONLY")
                pipe.info("all")
                for key in self.epoch_keys:
                    pipe.exists(key)
                pipe.dbsize()
                replies = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as exc:
            self._drop("info", name)
            return {"role": "down", "error": type(exc).__name__}
        info, dbsize = replies[1], replies[-1]
        if isinstance(info, Exception) or isinstance(dbsize, Exception):
            self._drop("info", name)
            return {"role": "down", "error": type(info).__name__}
        held = sum(1 for r in replies[2:-1] if isinstance(r, int) and r > 0)
        return node_figures(info, held, dbsize)


def logical_shards_of(rig: ClusterRig, shard: str) -> list[int]:
    """tally's logical shards (``KeyLayout``) whose slot the cluster shard ``shard`` serves."""
    first, end = rig.shard_slots(shard)
    layout = KeyLayout(NAMESPACE, SHARDS)
    return [k for k in range(SHARDS) if first <= key_slot(layout.epoch(k).encode()) < end]
