"""Which node holds a shard on a Redis Cluster: the per-shard processes (drain, reconcile) run
their single-node code on the plain client of the primary that owns the shard's slot, so a
MULTI over one shard's keys stays on one node and one slot."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from tally.store.cluster_store import cluster_error
from tally.store.keys import KeyLayout

#: The client to use for one shard.
Route = Callable[[int], redis.Redis]


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


def _node_client(cluster: Any, node: Any) -> redis.Redis:
    conn: redis.Redis | None = node.redis_connection
    return conn if conn is not None else cluster.get_redis_connection(node)


def key_client(cluster: RedisCluster, key: str) -> redis.Redis:
    """The plain client of the primary serving ``key``'s slot."""
    any_cluster: Any = cluster
    try:
        node = any_cluster.get_node_from_key(key, replica=False)
        return _node_client(cluster, node)
    except (redis.RedisError, RedisClusterException) as exc:
        raise cluster_error(exc, sent=False) from exc


def route(client: redis.Redis | RedisCluster, layout: KeyLayout) -> Route:
    if isinstance(client, RedisCluster):
        cluster = client
        return lambda shard: key_client(cluster, layout.epoch(shard))
    single = client
    return lambda _shard: single


def primary_clients(client: redis.Redis | RedisCluster) -> list[redis.Redis]:
    """Every primary's plain client (one primary: the client itself)."""
    if not isinstance(client, RedisCluster):
        return [client]
    any_cluster: Any = client
    try:
        return [_node_client(client, n) for n in any_cluster.get_primaries()]
    except (redis.RedisError, RedisClusterException) as exc:
        raise cluster_error(exc, sent=False) from exc
