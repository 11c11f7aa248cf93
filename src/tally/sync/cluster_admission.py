"""The sync quarantine seen from a cluster client (``tally serve``, ``tally rebuild``): which
nodes replicate which primary, a client of any of them, and the sweep that admits what a
restart tally never saw left quarantined (:mod:`tally.ops.cluster.admission` judges).

A node restarted by systemd or by hand starts with its replication user off (its config file
says so) and nobody judged it: a primary with its data then refuses its replicas, which stay
behind (``min-replicas-to-write`` refuses the shard's writes once they lag). ``tally serve`` on
a cluster runs :func:`sweep` every few seconds: each primary and replica is asked whether it is
quarantined (one ``ACL GETUSER``), and a quarantined one is judged against its shard; an empty
primary whose replicas hold the epoch stays out (``tally rebuild --shard K`` promotes).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import redis
from redis.cluster import RedisCluster

from tally.ops.cluster.admission import Admission, is_admitted, judge
from tally.ops.cluster.procs import command
from tally.store.errors import text

SWEEP_NODES_MAX = 256  # bounded: a cluster this size has at most so many nodes


def connect_like(like: redis.Redis, host: str, port: int) -> redis.Redis:
    """A plain client of another node (redis-py's slot map may not list a replica whose link
    to its primary is down), with the credentials and timeouts of ``like``."""
    kwargs = like.get_connection_kwargs()
    keep = ("username", "password", "socket_timeout", "socket_connect_timeout")
    return redis.Redis(host=host, port=port, **{k: kwargs[k] for k in keep if k in kwargs})


def address_of(client: redis.Redis) -> str:
    kwargs = client.get_connection_kwargs()
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def replica_addresses(primary: redis.Redis) -> list[tuple[str, int]]:
    """The replicas the primary's node table lists (announced addresses), failed ones left out."""
    my_id = text(command(primary, "CLUSTER", "MYID"))
    out = []
    for line in command(primary, "CLUSTER", "REPLICAS", my_id) or []:
        fields = (text(line) or "").split()
        host, _, port = fields[1].partition("@")[0].rpartition(":")
        if "fail" not in fields[2].split(","):
            out.append((host, int(port)))
    return out


def _judge(primary: redis.Redis, host: str, port: int, peers: list[tuple[str, int]]) -> Admission:
    return judge(
        f"{host}:{port}",
        functools.partial(connect_like, primary, host, port),
        {f"{h}:{p}": functools.partial(connect_like, primary, h, p) for h, p in peers},
    )


def sweep(cluster: RedisCluster | redis.Redis) -> list[Admission]:
    """Judge every quarantined node of the cluster; returns the judgements made (empty when
    nothing was quarantined; a single primary: nothing to do). Nodes that cannot be asked are
    left to the next sweep."""
    if not isinstance(cluster, RedisCluster):
        return []
    any_cluster: Any = cluster
    judged: list[Admission] = []
    for node in any_cluster.get_primaries()[:SWEEP_NODES_MAX]:
        primary: redis.Redis = any_cluster.get_redis_connection(node)
        try:
            replicas = replica_addresses(primary)
            host, port = str(node.host), int(node.port)
            if is_admitted(primary) is False:
                judged.append(_judge(primary, host, port, replicas))
            for r_host, r_port in replicas:
                with contextlib.closing(connect_like(primary, r_host, r_port)) as replica:
                    quarantined = is_admitted(replica) is False
                if quarantined:  # a replica copies its primary: judged, it is let in
                    judged.append(_judge(primary, r_host, r_port, []))
        except (redis.RedisError, OSError):
            continue
    return judged
