"""The drainer on a Redis Cluster: every shard's journal read from the primary that owns its
slot (redis-py's cluster pipeline sends each single-key command to its slot's primary, in the
same three round trips a round as on one primary), one consumer group per shard as on one
primary; what differs is what would cross slots or nodes:

- the replica fence is per primary: for the primaries whose shards gave entries this round, one
  connection each writes a tally-owned key in one of those shards' slots and ``WAIT``s on that
  same connection (in cluster mode ``PUBLISH`` goes over the cluster bus, not the replication
  stream, so it would not move the connection's offset); a primary refusing the write
  (NOREPLICAS) or acknowledging too few replicas holds the whole round back. How many is
  enough: ``replicas``, or with ``per_primary`` (the automatic fence) every replica the node
  table gives that primary (read again at most every ``NODE_TABLE_TTL_S``, and at once for a
  primary it does not list: a failover). One is not enough with two replicas per shard: the
  one cut off can be the one promoted (the Sentinel case, tests/cluster/test_drain_fence_sentinel.py);
- the trim reads one shard's group state in a MULTI on that shard's primary (never one MULTI
  over several shards: they may sit on different nodes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from tally.domain.limits import DRAIN_REPLICAS_MAX
from tally.errors import StoreLost
from tally.ledger.models import Epoch
from tally.store.cluster_store import cluster_error, replicas_by_primary
from tally.store.errors import translated
from tally.sync.cluster_route import key_client
from tally.sync.drainer import GROUP, Drainer, Entry, _trim_below, log

#: How long the automatic fence trusts its copy of the node table.
NODE_TABLE_TTL_S = 5.0


class ClusterDrainer(Drainer):
    """``Drainer`` over ``RedisCluster`` (passed as ``client``); ``per_primary``: the fence waits
    for every replica of each primary (``replicas`` is then the floor)."""

    _round: set[int]

    def __init__(self, *args: Any, per_primary: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_primary = per_primary
        self._table: dict[str, int] = {}
        self._table_at = float("-inf")

    def replicas_for(self, node_name: str) -> int:
        """Replicas that must acknowledge on the primary ``node_name``."""
        if not self.per_primary:
            return self.replicas
        now = time.monotonic()
        if node_name not in self._table or now - self._table_at > NODE_TABLE_TTL_S:
            self._table = replicas_by_primary(self.client)  # type: ignore[arg-type]
            self._table_at = now
        return max(self.replicas, min(self._table.get(node_name, 0), DRAIN_REPLICAS_MAX))

    def run_once(self, limit: int = 1000) -> int:
        """As ``Drainer.run_once``; redis-py's cluster-level failures (no reachable node, an
        uncovered slot: not ``RedisError``s) leave as ``StoreUnavailable``, so ``run`` paces
        and retries them like any infrastructure error."""
        self._round = set()
        try:
            return super().run_once(limit)
        except RedisClusterException as exc:
            raise cluster_error(exc, sent=False) from exc

    def _read_round(
        self, order: list[int], epoch: Epoch, limit: int
    ) -> tuple[list[tuple[int, list[Entry]]], StoreLost | None]:
        """As on one primary, over redis-py's cluster pipeline (each command sent to the
        primary of its slot, the primaries' parts side by side); the shards that gave entries
        are the ones the fence asks."""
        batches, lost = super()._read_round(order, epoch, limit)
        self._round = {shard for shard, _ in batches}
        return batches, lost

    def _node(self, key: str) -> redis.Redis:
        return key_client(self.client, key)  # type: ignore[arg-type]  # a RedisCluster

    def _fence(self) -> bool:
        if self.replicas == 0 and not self.per_primary:
            return True
        by_node: dict[str, int] = {}
        cluster: Any = self.client
        for shard in sorted(getattr(self, "_round", set())):
            node = cluster.get_node_from_key(self.layout.epoch(shard), replica=False)
            by_node.setdefault(node.name, shard)
        short: tuple[int, int] | None = None  # (acknowledged, wanted) of a primary short of it
        acked_min: int | None = None
        for name, shard in by_node.items():
            wanted = self.replicas_for(name)
            if wanted == 0:
                continue
            fence_key = f"{self.layout.tag(shard)}:drainfence"
            with translated("drain fence"):
                pipe = self._node(fence_key).pipeline(transaction=False)
                pipe.set(fence_key, self.consumer)
                pipe.wait(wanted, self.fence_timeout_ms)
                try:
                    _, acked_reply = pipe.execute()
                    acked = int(acked_reply)
                except redis.ResponseError as exc:
                    if "NOREPLICAS" not in str(exc):
                        raise
                    acked = 0
            acked_min = acked if acked_min is None else min(acked_min, acked)
            if acked < wanted and short is None:
                short = (acked, wanted)
        self.stats.last_fence_acked = acked_min if acked_min is not None else self.replicas
        if short is None:
            return True
        self.stats.fenced += 1
        log.warning(
            "drainer: a shard's primary had %d of %d replica(s) acknowledge within %d ms; "
            "settling nothing this round",
            short[0],
            short[1],
            self.fence_timeout_ms,
        )
        return False

    def trim_many(self, shards: Sequence[int]) -> int:
        trimmed = 0
        for shard in shards:
            key = self.layout.journal(shard)
            with translated("journal trim"):
                pipe = self._node(key).pipeline(transaction=True)
                pipe.xinfo_groups(key)
                pipe.xpending(key, GROUP)
                groups, pending = pipe.execute()
                minid = _trim_below(shard, groups, pending)
                if minid is not None:
                    trimmed += int(self.client.xtrim(key, minid=str(minid), approximate=False))
        return trimmed
