"""Initialise a new deployment on a Redis Cluster: the first epoch, every shard's journal with
the drainer group, and every shard's epoch key (one SET each: on a cluster every shard's epoch
key is its own, so a shard restarted empty refuses alone while the others serve).

Only an EMPTY cluster and an empty ledger are initialised here; a rebuild on a cluster (whole,
or one shard under its own epoch) is ``sync.shard_rebuild``.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from tally.domain.invariant import invariant
from tally.ledger.models import EpochKind, EpochStatus
from tally.ledger.sql_epochs import AlreadyInitialised
from tally.ledger.sql_ledger import SqlLedger
from tally.store.cluster_store import cluster_error, stamp_shard_epochs
from tally.store.keys import KeyLayout
from tally.sync.drainer import GROUP
from tally.sync.rebuild import RebuildRefused, RebuildReport


def init_cluster_store(client: RedisCluster, layout: KeyLayout, ledger: SqlLedger) -> RebuildReport:
    current = ledger.current_epoch()
    if current is not None:
        raise AlreadyInitialised(f"the ledger's current epoch is {current.epoch_id}")
    if ledger.count_accounts() > 0:
        raise RebuildRefused("the ledger holds accounts but no epoch: not a new deployment")
    try:
        sizes = client.dbsize(target_nodes=RedisCluster.PRIMARIES)  # summed over the primaries
    except (redis.RedisError, RedisClusterException) as exc:
        raise cluster_error(exc, sent=False) from exc
    held = sum(sizes.values()) if isinstance(sizes, dict) else int(sizes)
    if held:
        raise RebuildRefused(f"the cluster holds {held} keys: only an empty cluster is initialised")
    epoch = ledger.begin_rebuild(layout.namespace, layout.shards, kind=EpochKind.init)
    for key in layout.journals():
        try:
            client.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise cluster_error(exc, sent=True) from exc
        except (redis.RedisError, RedisClusterException) as exc:
            raise cluster_error(exc, sent=True) from exc
    stamp_shard_epochs(client, layout, epoch.epoch_id)
    finished = ledger.finish_rebuild(epoch.epoch_id)
    invariant(finished.status is EpochStatus.current, "init finished but epoch not current")
    return RebuildReport(epoch.epoch_id, EpochKind.init.value, layout.shards, "empty", 0, 0, 0, 0)
