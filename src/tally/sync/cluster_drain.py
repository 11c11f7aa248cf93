"""The drainer on a Redis Cluster: every shard's journal read from the primary that owns its
slot (redis-py's ``RedisCluster`` routes each single-key command), one consumer group per
shard as on one primary; what differs is what would cross slots or nodes:

- the replica fence is per primary: for the primaries whose shards gave entries this round, one
  connection each writes a tally-owned key in one of those shards' slots and ``WAIT``s on that
  same connection (in cluster mode ``PUBLISH`` goes over the cluster bus, not the replication
  stream, so it would not move the connection's offset); a primary refusing the write
  (NOREPLICAS) or acknowledging too few replicas holds the whole round back;
- the trim reads one shard's group state in a MULTI on that shard's primary (never one MULTI
  over several shards: they may sit on different nodes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from tally.ledger.models import Epoch
from tally.store.cluster_store import cluster_error
from tally.store.errors import translated
from tally.sync.cluster_route import key_client
from tally.sync.drainer import GROUP, Drainer, Entry, _trim_below, log


class ClusterDrainer(Drainer):
    """``Drainer`` over ``RedisCluster`` (passed as ``client``)."""

    _round: set[int]

    def run_once(self, limit: int = 1000) -> int:
        """As ``Drainer.run_once``; redis-py's cluster-level failures (no reachable node, an
        uncovered slot: not ``RedisError``s) leave as ``StoreUnavailable``, so ``run`` paces
        and retries them like any infrastructure error."""
        self._round = set()
        try:
            return super().run_once(limit)
        except RedisClusterException as exc:
            raise cluster_error(exc, sent=False) from exc

    def _read_shard(self, shard: int, epoch: Epoch, count: int) -> list[Entry]:
        entries = super()._read_shard(shard, epoch, count)
        if entries:
            self._round.add(shard)
        return entries

    def _node(self, key: str) -> redis.Redis:
        return key_client(self.client, key)  # type: ignore[arg-type]  # a RedisCluster

    def _fence(self) -> bool:
        if self.replicas == 0:
            return True
        by_node: dict[str, int] = {}
        cluster: Any = self.client
        for shard in sorted(getattr(self, "_round", set())):
            node = cluster.get_node_from_key(self.layout.epoch(shard), replica=False)
            by_node.setdefault(node.name, shard)
        acked_min: int | None = None
        for shard in by_node.values():
            fence_key = f"{self.layout.tag(shard)}:drainfence"
            with translated("drain fence"):
                pipe = self._node(fence_key).pipeline(transaction=False)
                pipe.set(fence_key, self.consumer)
                pipe.wait(self.replicas, self.fence_timeout_ms)
                try:
                    _, acked_reply = pipe.execute()
                    acked = int(acked_reply)
                except redis.ResponseError as exc:
                    if "NOREPLICAS" not in str(exc):
                        raise
                    acked = 0
            acked_min = acked if acked_min is None else min(acked_min, acked)
        acked_now = self.replicas if acked_min is None else acked_min
        self.stats.last_fence_acked = acked_now
        if acked_now >= self.replicas:
            return True
        self.stats.fenced += 1
        log.warning(
            "drainer: a shard's primary had %d of %d replica(s) acknowledge within %d ms; "
            "settling nothing this round",
            acked_now,
            self.replicas,
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
