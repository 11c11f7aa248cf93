"""Before a lost shard is rebuilt from the ledger: promote a replica that still holds it.

A hardened cluster node serves syncs only once admitted (:mod:`tally.ops.cluster.admission`),
so a primary restarted EMPTY keeps its replicas off: they still hold the shard, undrained
journal included, which a rebuild from the ledger would lose (the ledger has only what was
drained). ``tally rebuild --shard K`` therefore first looks at the replicas of the primary
owning K's slot: when that primary lacks K's epoch key and a replica holds K's current epoch,
the replica is promoted (``CLUSTER FAILOVER TAKEOVER``: no vote, the old primary is up but
empty), admitted to serve syncs, and the old primary, now a replica that copies it, is
admitted too. Nothing is rebuilt; every logical shard of that primary is back at once.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from tally.ops.cluster.admission import admit
from tally.ops.cluster.procs import command
from tally.store.errors import text
from tally.store.keys import KeyLayout
from tally.sync.cluster_admission import address_of, connect_like, replica_addresses
from tally.sync.cluster_route import key_client
from tally.sync.rebuild import RebuildRefused

PROMOTE_WAIT_S = 20.0  # TAKEOVER needs no vote: the new primary claims the slots at once
DEMOTE_WAIT_S = 10.0  # the old primary hears of it on the cluster bus
POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class Promotion:
    promoted: str  # host:port (announced) of the replica now primary
    old_primary: str
    old_primary_admitted: bool


def _holds(client: redis.Redis, key: str, value: str) -> int | None:
    """The replica's replication offset when it holds ``key`` = ``value``, else None."""
    try:
        command(client, "READONLY")
        if text(client.get(key)) != value:
            return None
        return int(client.info("replication").get("slave_repl_offset", 0))
    except (redis.RedisError, OSError):
        return None


def _wait(check: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # bounded by the deadline
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return True
        time.sleep(POLL_S)
    return False


def _role(client: redis.Redis) -> str:
    return text(command(client, "ROLE")[0]) or ""


def promote_holder(
    cluster: RedisCluster, layout: KeyLayout, shard: int, epoch_value: str
) -> Promotion | None:
    """Promote the replica holding shard ``shard``'s epoch ``epoch_value`` when the primary
    owning the shard's slot lacks its epoch key; None when there is nothing to promote (the
    primary holds an epoch key, or no replica holds this one)."""
    key = layout.epoch(shard)
    primary = key_client(cluster, key)
    if primary.get(key) is not None:
        return None
    old_addr = address_of(primary)
    best: tuple[int, str, tuple[str, int]] | None = None
    for host, port in replica_addresses(primary):
        with contextlib.closing(connect_like(primary, host, port)) as replica:
            offset = _holds(replica, key, epoch_value)
        if offset is not None and (best is None or offset > best[0]):
            best = (offset, f"{host}:{port}", (host, port))
    if best is None:
        return None
    _, new_addr, (host, port) = best
    with contextlib.closing(connect_like(primary, host, port)) as chosen:
        demoted = _take_over(chosen, primary, shard, new_addr)
    with contextlib.suppress(redis.RedisError):
        any_cluster: Any = cluster
        any_cluster.nodes_manager.initialize()  # the slot map names the new primary
    return Promotion(new_addr, old_addr, demoted)


def _take_over(chosen: redis.Redis, primary: redis.Redis, shard: int, new_addr: str) -> bool:
    """TAKEOVER on ``chosen``, admit it, and admit the old primary once it is its replica
    (returns whether it became one in time)."""
    try:
        command(chosen, "CLUSTER", "FAILOVER", "TAKEOVER")
    except redis.ResponseError:
        if _role(chosen) != "master":  # already promoted (a rebuild racing this one) is fine
            raise
    if not _wait(lambda: _role(chosen) == "master", PROMOTE_WAIT_S):
        raise RebuildRefused(
            f"shard {shard}: {new_addr} holds its epoch but did not become primary within "
            f"{PROMOTE_WAIT_S:.0f} s; nothing was rebuilt (run the rebuild again)"
        )
    admit(chosen)
    demoted = _wait(lambda: _role(primary) == "slave", DEMOTE_WAIT_S)
    if demoted:
        admit(primary)  # a replica copies its primary: nothing of its own to protect
    return demoted
