"""The preflight rules: stable ids, a severity, why the setting is dangerous, and the fix.

Each check looks at one ``Context`` (settings + the role the node is meant to have + sizing
parameters) and returns a detail sentence when it fires, or None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from tally.ops.preflight.settings import NodeSettings, is_loopback
from tally.ops.profiles import (
    ProfileParams,
    backlog_need_bytes,
    full_sync_buffer_need_bytes,
    full_sync_s,
    slowest_link,
)
from tally.ops.topology import Topology


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


ROLES = ("primary", "replica")


LINK_ASSUMED_BYTES_PER_S = 12_500_000  # no link stated, no topology: 100 Mbit/s between DCs
LINK_ASSUMED_LATENCY_MS = 50  # no topology: a continental WAN, one way


@dataclass(frozen=True)
class PreflightParams:
    """What the rules check against. ``sizing`` is the profile's own :class:`ProfileParams` (a
    topology's ``[params]``), so preflight judges a config by the figures the hardened profile
    was sized from, with the same formulas (``tally.ops.profiles``):

    * TP004: backlog need ``backlog_need_bytes(write_rate_bytes_per_s, partition_s_max)``;
    * TP005: a full sync of the dataset takes ``dataset / slowest link`` seconds, during which
      the replica's output buffer grows by ``full_sync_buffer_need_bytes(...)`` (a lower bound:
      the replica's load time comes on top). The dataset is ``dataset_bytes_max``, or what the
      node holds (RDB file, ``used_memory``) when that is more.

    Below the need at the stated rate is an error; below it at rate × ``safety_factor`` (what the
    profile sizes for) a warning. The link is ``sizing.slowest_link_bytes_per_s`` when stated,
    else ``slowest_link_bytes_per_s`` (the topology's slowest link; 0 = unlimited).
    """

    sizing: ProfileParams = field(default_factory=ProfileParams)
    slowest_link_bytes_per_s: int = LINK_ASSUMED_BYTES_PER_S
    replicas_expected: int = 2
    redis_version: tuple[int, int] | None = None  # default: the redis-server tally would run
    #: One-way latency of the slowest link between data centers (TP012: the cluster bus's
    #: PING/PONG must come back well within cluster-node-timeout).
    link_latency_ms_max: int = LINK_ASSUMED_LATENCY_MS

    @property
    def link_bytes_per_s(self) -> int:
        return slowest_link(self.sizing, self.slowest_link_bytes_per_s)

    @classmethod
    def single_node(cls, sizing: ProfileParams | None = None) -> PreflightParams:
        """One primary with no replica expected: the embedded ``serve`` node, ``tally local up``,
        or a ``--redis-url`` primary judged by what it is. A live node's connected replicas
        still count (TP008, TP009)."""
        return cls(sizing or ProfileParams(), replicas_expected=0)

    @classmethod
    def for_topology(
        cls, topology: Topology, *, sizing: ProfileParams | None = None
    ) -> PreflightParams:
        """The figures a topology's nodes were generated from: its ``[params]`` (or ``sizing``),
        its slowest link, its replica count."""
        if sizing is None:
            sizing = ProfileParams.from_mapping(
                topology.params, source=f"{topology.source} [params]"
            )
        rates = [lk.bandwidth_bytes_per_s for lk in topology.links if lk.bandwidth_bytes_per_s]
        latency = max((lk.latency_ms for lk in topology.links), default=0)
        if topology.is_cluster:  # a cluster's primaries each serve their own shard's replicas
            replicas = max(len(shard.replicas) for shard in topology.shards)
        else:
            replicas = len(topology.replicas)
        return cls(sizing, min(rates, default=0), replicas, link_latency_ms_max=latency)


@dataclass(frozen=True)
class Finding:
    rule_id: str
    severity: Severity
    title: str
    detail: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Context:
    settings: NodeSettings
    role: str
    params: PreflightParams
    source: str  # "file" or "live"


Check = Callable[[Context], "str | tuple[Severity, str] | None"]


@dataclass(frozen=True)
class Rule:
    rule_id: str
    severity: Severity
    title: str
    explanation: str
    fix: str
    check: Check

    def evaluate(self, ctx: Context) -> Finding | None:
        result = self.check(ctx)
        if result is None:
            return None
        severity, detail = result if isinstance(result, tuple) else (self.severity, result)
        return Finding(self.rule_id, severity, self.title, f"{detail} {self.explanation}", self.fix)


def _mb(count: float) -> str:
    if count < 1024**2:
        return f"{count / 1024:.1f} KiB"
    return f"{count / 1024**2:.1f} MiB"


# -- checks ------------------------------------------------------------------------------------
def _aof_would_load_nothing(ctx: Context) -> str | None:
    s, data = ctx.settings, ctx.settings.data
    if not s.appendonly or data is None or data.rdb_bytes is None:
        return None
    if ctx.source == "live":
        # A replica in sync holds its primary's dataset, and the dump.rdb beside it is what its
        # last full sync wrote there: no keys means none on the primary (TP001 asks it).
        if s.keys_total or s.replica_link_up:
            return None
        return (
            f"The node runs with appendonly yes and no keys, while {data.rdb_path} holds "
            f"{data.rdb_bytes} bytes: it most likely started from a missing AOF."
        )
    if data.aof_present:
        return None
    return (
        f"appendonly is yes, {data.aof_description}, "
        f"but {data.rdb_path} holds {data.rdb_bytes} bytes."
    )


def _replicaof_on_primary(ctx: Context) -> str | None:
    target = ctx.settings.replicaof
    if ctx.settings.cluster_enabled:
        # A cluster node's role comes from the cluster (CLUSTER REPLICATE, nodes.conf, its
        # failovers), never from the file: redis-server refuses to start with replicaof in
        # cluster mode, whatever role the node is meant to have. Live, roles move with every
        # failover; the cluster's own view (`tally cluster status`) says who serves which slots.
        if ctx.source == "live" or target is None:
            return None
        return (
            f"This cluster node has replicaof {target[0]}:{target[1]}: in cluster mode "
            "redis-server refuses to start with it."
        )
    if ctx.role != "primary" or target is None:
        return None
    where = "is a replica of" if ctx.source == "live" else "has replicaof"
    return f"This node is meant to be the primary but {where} {target[0]}:{target[1]}."


def _replicaof_self(ctx: Context) -> str | None:
    s = ctx.settings
    if s.replicaof is None:
        return None
    host, port = s.replicaof
    own_hosts = {h.lstrip("-") for h in s.binds or ()}
    if port == s.port and (is_loopback(host) or host in own_hosts or host == "0.0.0.0"):
        return f"replicaof {host} {port} is this node's own address."
    return None


def _short_of(need_bytes: int, margin_bytes: int, have_bytes: int) -> Severity | None:
    """ERROR below the need at the stated rate, WARNING below it at rate x safety_factor."""
    if have_bytes < need_bytes:
        return Severity.ERROR
    return Severity.WARNING if have_bytes < margin_bytes else None


def _backlog_too_small(ctx: Context) -> tuple[Severity, str] | None:
    p, have = ctx.params.sizing, ctx.settings.backlog_bytes
    need = backlog_need_bytes(p.write_rate_bytes_per_s, p.partition_s_max)
    margin = backlog_need_bytes(p.write_rate_bytes_per_s, p.partition_s_max, p.safety_factor)
    severity = _short_of(need, margin, have)
    if severity is None:
        return None
    return severity, (
        f"repl-backlog-size is {_mb(have)}; write_rate_bytes_per_s {_mb(p.write_rate_bytes_per_s)}"
        f"/s x partition_s_max {p.partition_s_max:g} s needs {_mb(need)}, "
        f"{_mb(margin)} with safety_factor {p.safety_factor:g}."
    )


def _dataset_bytes(ctx: Context) -> tuple[int, str]:
    """The stated ``dataset_bytes_max``, or what the node holds when that is more."""
    s, stated = ctx.settings, ctx.params.sizing.dataset_bytes_max
    if s.data is not None and s.data.rdb_bytes is not None and ctx.source == "file":
        held, what = s.data.rdb_bytes, f"the RDB file ({s.data.rdb_path})"
    else:
        held, what = s.used_memory_bytes or 0, "used_memory"
    if held > stated:
        return held, f"{what}, more than dataset_bytes_max {_mb(stated)}"
    return stated, "dataset_bytes_max"


def _overflows(ctx: Context, dataset: int, link: int, margin: float) -> bool:
    """The replica limit cuts a full sync off at write rate x ``margin``."""
    hard, soft, soft_s = ctx.settings.replica_obl
    rate = ctx.params.sizing.write_rate_bytes_per_s * margin
    grown = full_sync_buffer_need_bytes(rate, dataset, link)
    soft_reached_s = soft / rate
    hard_hit = bool(hard) and hard < grown
    soft_hit = bool(soft) and soft < grown and full_sync_s(dataset, link) - soft_reached_s > soft_s
    return hard_hit or soft_hit


def _output_buffer_too_small(ctx: Context) -> tuple[Severity, str] | None:
    p, link = ctx.params.sizing, ctx.params.link_bytes_per_s
    dataset, what = _dataset_bytes(ctx)
    if _overflows(ctx, dataset, link, 1.0):
        severity = Severity.ERROR
    elif _overflows(ctx, dataset, link, p.safety_factor):
        severity = Severity.WARNING
    else:
        return None
    hard, soft, soft_s = ctx.settings.replica_obl
    grown = full_sync_buffer_need_bytes(p.write_rate_bytes_per_s, dataset, link)
    return severity, (
        f"A full sync of {_mb(dataset)} ({what}) over {_mb(link)}/s takes "
        f"{full_sync_s(dataset, link):.1f} s, during which {_mb(grown)} of writes accumulate "
        f"(x safety_factor {p.safety_factor:g}: {_mb(grown * p.safety_factor)}); the replica "
        f"limit is hard {_mb(hard)}, soft {_mb(soft)} for {soft_s} s."
    )


def _evicting_policy(ctx: Context) -> str | tuple[Severity, str] | None:
    s = ctx.settings
    if s.maxmemory_policy == "noeviction":
        return None
    detail = f"maxmemory-policy is {s.maxmemory_policy}"
    if s.maxmemory_bytes == 0:
        return Severity.WARNING, f"{detail} (maxmemory is 0 today, so it is not armed yet)."
    return f"{detail} with maxmemory {_mb(s.maxmemory_bytes)}."


def _no_persistence(ctx: Context) -> str | None:
    s = ctx.settings
    if ctx.role != "primary" or s.appendonly or s.save_points:
        return None
    return "The primary has no save points and appendonly no."


def _replicas(ctx: Context) -> int:
    """Replicas the primary serves: those expected, or those a live node has when more."""
    return max(ctx.params.replicas_expected, ctx.settings.connected_replicas or 0)


def _uncoalesced_full_syncs(ctx: Context) -> str | None:
    s = ctx.settings
    replicas = _replicas(ctx)
    if ctx.role != "primary" or replicas < 2 or (s.diskless_sync and s.diskless_delay_s >= 1):
        return None
    how = "disk-based sync" if not s.diskless_sync else "diskless sync with delay 0"
    return f"{replicas} replicas expected, {how}."


def _no_min_replicas(ctx: Context) -> str | None:
    s = ctx.settings
    if ctx.role != "primary" or _replicas(ctx) < 1 or s.min_replicas_to_write:
        return None
    return "min-replicas-to-write is 0."


def _open_without_auth(ctx: Context) -> str | None:
    s = ctx.settings
    if s.auth:
        return None
    if s.binds is None:
        return "No bind directive (all interfaces) and no password."
    public = [b for b in s.binds if not is_loopback(b)]
    return f"Bound to {', '.join(public)} with no password." if public else None


def _replica_without_primary(ctx: Context) -> str | None:
    if ctx.settings.cluster_enabled:
        return None  # a cluster replica's primary is in its cluster-config-file (TP002)
    if ctx.role != "replica" or ctx.settings.replicaof is not None:
        return None
    return "This node is meant to be a replica but has no replicaof."


def cluster_node_timeout_need_ms(link_latency_ms: int, margin: float = 1.0) -> int:
    """What ``cluster-node-timeout`` must exceed over a link of this one-way latency: a node
    that has no PONG after half the timeout drops and reconnects the link, and one with no PONG
    after the whole timeout is suspected failed; a PONG takes a round trip (2 x latency). So
    the half timeout must exceed a round trip: timeout > 4 x latency (x ``margin``)."""
    return math.ceil(4 * link_latency_ms * margin)


def _cluster_node_timeout(ctx: Context) -> tuple[Severity, str] | None:
    s, p = ctx.settings, ctx.params
    if not s.cluster_enabled:
        return None
    timeout, latency = s.cluster_node_timeout_ms, p.link_latency_ms_max
    lag_ms = s.min_replicas_max_lag_s * 1000
    if s.min_replicas_to_write and timeout > lag_ms:
        return Severity.ERROR, (
            f"cluster-node-timeout is {timeout} ms, above min-replicas-max-lag "
            f"{s.min_replicas_max_lag_s} s: a primary isolated together with a replica in its "
            f"own data center keeps that replica's ACKs and stops writing only when it sees "
            f"itself in the minority, after {timeout} ms; what it acknowledged until then, the "
            "failover on the other side loses, beyond the bound min-replicas-max-lag states."
        )
    need = cluster_node_timeout_need_ms(latency)
    margin = cluster_node_timeout_need_ms(latency, p.sizing.safety_factor)
    severity = _short_of(need, margin, timeout)
    if severity is None:
        return None
    return severity, (
        f"cluster-node-timeout is {timeout} ms; over the slowest link ({latency} ms one way, "
        f"a PONG takes {2 * latency} ms) it must exceed {need} ms, {margin} ms with "
        f"safety_factor {p.sizing.safety_factor:g}: below that, healthy nodes are marked "
        "failed and their replicas promoted with no fault at all."
    )


def _full_coverage_required(ctx: Context) -> str | None:
    s = ctx.settings
    if not s.cluster_enabled or not s.cluster_require_full_coverage:
        return None
    return "cluster-require-full-coverage is yes."


RULES: tuple[Rule, ...] = (
    Rule(
        "TP001",
        Severity.ERROR,
        "AOF enabled but only an RDB exists: Redis would start EMPTY",
        "With appendonly yes redis-server loads only the AOF; a missing AOF means an empty "
        "dataset, silently, and the next default SHUTDOWN overwrites the good dump.rdb "
        "(the 2013 incident). Redis 7 keeps the AOF as appenddirname/<appendfilename>.manifest, "
        "6.2 as a single appendfilename file.",
        "Start once with appendonly no so the RDB loads, then CONFIG SET appendonly yes (Redis "
        "writes the AOF from memory) and CONFIG REWRITE; never enable AOF by editing the file.",
        _aof_would_load_nothing,
    ),
    Rule(
        "TP002",
        Severity.ERROR,
        "replicaof on a node meant to be the primary",
        "A replica is read-only: every balance write fails READONLY (the 2013 incident).",
        "Remove the replicaof/slaveof line from the primary's config (or REPLICAOF NO ONE).",
        _replicaof_on_primary,
    ),
    Rule(
        "TP003",
        Severity.ERROR,
        "replicaof points at the node itself",
        "The node is read-only and can never sync; writes fail READONLY.",
        "Point replicaof at the real primary, or remove it on the primary.",
        _replicaof_self,
    ),
    Rule(
        "TP004",
        Severity.ERROR,
        "replication backlog too small for the tolerated partition",
        "When replicas reconnect after a partition longer than the backlog covers, each needs "
        "a FULL sync instead of a partial one: the full-sync storm of 2013.",
        "Set repl-backlog-size >= write_rate_bytes_per_s x partition_s_max x safety_factor "
        "(what the hardened profile sets).",
        _backlog_too_small,
    ),
    Rule(
        "TP005",
        Severity.ERROR,
        "replica output buffer too small for a full sync over the slowest link",
        "The primary drops a replica whose output buffer passes the limit during the sync; the "
        "replica starts another full sync, which overflows again: an endless full-sync loop.",
        "Raise client-output-buffer-limit replica (hard and soft) above write_rate_bytes_per_s "
        "x dataset_bytes_max / slowest_link_bytes_per_s x safety_factor (what the hardened "
        "profile sets), or 0 0 0 to disable; keep the soft seconds above the transfer.",
        _output_buffer_too_small,
    ),
    Rule(
        "TP006",
        Severity.ERROR,
        "maxmemory-policy can evict keys",
        "An evicted balance key is lost money: Redis drops it silently under memory pressure.",
        "Set maxmemory-policy noeviction: writes then fail with OOM, which tally reports.",
        _evicting_policy,
    ),
    Rule(
        "TP007",
        Severity.ERROR,
        "no persistence on the primary",
        "A restart of the primary comes back empty (and replicas then sync the empty dataset).",
        "Enable RDB save points and/or appendonly yes (see TP001 for enabling AOF safely).",
        _no_persistence,
    ),
    Rule(
        "TP008",
        Severity.ERROR,
        "full syncs of several replicas are not coalesced",
        "Replicas that reconnect together each get their own fork and transfer (disk-based "
        "sync forks anew for every late arrival), overloading the primary as in 2013.",
        "Set repl-diskless-sync yes and repl-diskless-sync-delay 5 so one transfer serves all.",
        _uncoalesced_full_syncs,
    ),
    Rule(
        "TP009",
        Severity.WARNING,
        "no min-replicas-to-write",
        "A primary cut off from all its replicas keeps acknowledging writes that a failover "
        "will lose.",
        "Set min-replicas-to-write 1 and min-replicas-max-lag 10 (bounds lost writes).",
        _no_min_replicas,
    ),
    Rule(
        "TP010",
        Severity.ERROR,
        "no authentication on a non-loopback bind",
        "Anyone who reaches the port can read balances, write them, or FLUSHALL.",
        "Set requirepass (or ACL users) and masterauth, or bind to loopback only.",
        _open_without_auth,
    ),
    Rule(
        "TP011",
        Severity.WARNING,
        "replica without replicaof",
        "A node meant to be a replica that boots as a primary serves stale or empty data "
        "and accepts writes that the real primary never sees.",
        "Add replicaof <primary-host> <port> (and masterauth) to the replica's config.",
        _replica_without_primary,
    ),
    Rule(
        "TP012",
        Severity.ERROR,
        "cluster-node-timeout does not fit min-replicas-max-lag and the WAN",
        "It decides both when the cluster fails a node over and how long an isolated primary "
        "keeps acknowledging writes.",
        "Set cluster-node-timeout (params.cluster_node_timeout_ms) at most min-replicas-max-lag "
        "x 1000 and above 4 x the slowest link's one-way latency x safety_factor; if both cannot "
        "hold, raise min-replicas-max-lag (a larger stated loss bound) or shorten the links.",
        _cluster_node_timeout,
    ),
    Rule(
        "TP013",
        Severity.ERROR,
        "a cluster primary without a replica in another data center",
        "(Topology rule.) When that data center is lost or cut off, no replica can win a "
        "failover (a replica there is cut off from the majority too), so the shard's slots "
        "stay down until the data center is back.",
        "Give every shard at least one replica in another data center (the hardened example "
        "gives each two, one per other data center).",
        lambda ctx: None,  # a topology check: see check_topology
    ),
    Rule(
        "TP014",
        Severity.ERROR,
        "cluster-require-full-coverage yes",
        "While any slot has no serving primary, every node of the cluster refuses every "
        "command: one shard's loss stops all shards' accounts.",
        "Set cluster-require-full-coverage no: the lost shard's slots fail alone; tally's "
        "per-shard epoch and health keep the other shards correct.",
        _full_coverage_required,
    ),
)


def check_topology(topology: Topology) -> list[Finding]:
    """The topology-level rules (TP013) on a topology file's placement of nodes."""
    if not topology.is_cluster:
        return []
    rule = next(r for r in RULES if r.rule_id == "TP013")
    findings = []
    for shard in topology.shards:
        primary = shard.primary
        if any(r.dc != primary.dc for r in shard.replicas):
            continue
        where = ", ".join(f"{r.name} ({r.dc})" for r in shard.replicas) or "no replica at all"
        detail = (
            f"Shard {shard.name}: primary {primary.name} is in {primary.dc}; its replicas: {where}."
        )
        findings.append(
            Finding(
                rule.rule_id, rule.severity, rule.title, f"{detail} {rule.explanation}", rule.fix
            )
        )
    return findings


def evaluate(ctx: Context) -> list[Finding]:
    findings = [f for f in (rule.evaluate(ctx) for rule in RULES) if f is not None]
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    return sorted(findings, key=lambda f: (order[f.severity], f.rule_id))
