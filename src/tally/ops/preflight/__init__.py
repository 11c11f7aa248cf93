"""Preflight: catch the Redis settings that turned the 2013 incident from a blip into a disaster,
before a node starts (a redis.conf plus its data dir) or on a live node (``CONFIG GET *`` +
``INFO``).

Public API (stable)::

    check_config_file(path, *, role="primary", params=PreflightParams(), data_dir=None)
        -> list[Finding]
    check_live(client, *, role="primary", params=PreflightParams()) -> list[Finding]
    check_topology(topology) -> list[Finding]          # placement rules (TP013)
    has_errors(findings) -> bool
    Finding(rule_id, severity, title, detail, fix)      # severity: Severity.ERROR|WARNING|INFO
    PreflightParams(sizing=ProfileParams(...), slowest_link_bytes_per_s, replicas_expected,
                    redis_version)                      # sizing: the profile's own figures
    PreflightParams.for_topology(topology)              # a topology file's [params] and links
    RULES                                               # every Rule, by stable id

TP004 and TP005 use the formulas of ``tally.ops.profiles`` with the figures of its
``ProfileParams``: one set of sizing inputs for generating a config and for checking one.

Findings come sorted: errors first, then by rule id. ``role`` is what the node is MEANT to be
("primary" or "replica"), not what it currently is. A malformed file, an ``include`` line (refused:
check a self-contained file, or the live node) or a bad role raise ``ConfigError``/``UsageError``.

Rules (see ``rules.RULES`` for explanations and fixes):

    TP001 error    appendonly yes, no AOF, an RDB exists: Redis would start EMPTY (6.2 and 7.x
                   layouts); live: AOF on, no keys, a non-empty dump.rdb beside it (not on
                   a replica whose link is up: it holds its primary's dataset)
    TP002 error    replicaof/slaveof on a node meant to be primary (live: role is replica)
    TP003 error    replicaof points at the node itself
    TP004 error    repl-backlog-size < write_rate_bytes_per_s x partition_s_max
                   (warning: < that x safety_factor, what the hardened profile sets)
    TP005 error    replica output buffer < write_rate x dataset / slowest link: a full sync
                   overflows (warning: at write_rate x safety_factor)
    TP006 error    maxmemory-policy evicts (warning while maxmemory is 0)
    TP007 error    primary with neither save points nor AOF
    TP008 error    primary with >= 2 replicas and no diskless sync with a delay
    TP009 warning  primary without min-replicas-to-write
    TP010 error    bound beyond loopback without a password
    TP011 warning  node meant to be a replica without replicaof (not on cluster nodes: their
                   role lives in the cluster config file)

Cluster nodes (``cluster-enabled yes``; TP001 and TP003 apply to them unchanged, TP002 fires
on any replicaof in a cluster node's file, which redis-server refuses to start with):

    TP012 error    cluster-node-timeout above min-replicas-max-lag (an isolated primary keeps
                   acknowledging writes past the stated loss bound), or not above 4 x the
                   slowest link's one-way latency (warning: x safety_factor): failovers
                   with no fault
    TP013 error    (topology) a shard's primary has no replica in another data center
    TP014 error    cluster-require-full-coverage yes: one shard's loss stops every shard
    TP015 warning  (live, ``check_cluster_live``) a cluster node did not answer: it is not
                   judged; one shard down must not stop the others from serving (readiness
                   and the recharge gate judge each shard)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from tally.errors import ConfigError, StoreUnavailable, UsageError
from tally.ops.binary import find_redis_server
from tally.ops.preflight.conf import parse_conf, read_conf, split_args
from tally.ops.preflight.rules import (
    ROLES,
    RULES,
    Context,
    Finding,
    PreflightParams,
    Rule,
    Severity,
    check_topology,
    evaluate,
)
from tally.ops.preflight.settings import (
    DataFacts,
    FileNames,
    NodeSettings,
    data_facts,
    from_conf,
    from_live,
    is_loopback,
)

__all__ = [
    "RULES",
    "Finding",
    "NodeSettings",
    "PreflightParams",
    "Rule",
    "Severity",
    "check_cluster_live",
    "check_config_file",
    "check_live",
    "check_topology",
    "has_errors",
    "parse_conf",
    "split_args",
]

_FALLBACK_VERSION = (7, 0)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UsageError(f"role must be one of {ROLES}, got {role!r}")


def _local_version(params: PreflightParams) -> tuple[int, int]:
    if params.redis_version is not None:
        return params.redis_version
    try:
        return find_redis_server().version[:2]
    except ConfigError:
        return _FALLBACK_VERSION


def check_config_file(
    path: Path | str,
    *,
    role: str = "primary",
    params: PreflightParams | None = None,
    data_dir: Path | str | None = None,
) -> list[Finding]:
    """Check a redis.conf before its node starts. ``data_dir`` overrides the file's ``dir``
    (a relative ``dir`` is taken relative to the config file's folder)."""
    _check_role(role)
    params = params or PreflightParams()
    conf = read_conf(Path(path))
    settings = from_conf(conf, Path(data_dir) if data_dir else None, _local_version(params))
    return evaluate(Context(settings, role, params, "file"))


def check_live(
    client: redis.Redis, *, role: str = "primary", params: PreflightParams | None = None
) -> list[Finding]:
    """Check a running node. Its data dir is inspected too when the node is on this machine."""
    _check_role(role)
    params = params or PreflightParams()
    try:
        config = _text_dict(client.config_get("*"))
        info = client.info("everything")
        auth = bool(config.get("requirepass")) or _default_user_has_password(client)
    except redis.RedisError as exc:
        raise StoreUnavailable(f"cannot read config and INFO from the node: {exc}") from exc
    settings = from_live(config, info, _live_data(client, config, info), auth=auth)
    return evaluate(Context(settings, role, params, "live"))


#: Rules that judge a node against the deployment's sizing (write rate, partition length, link
#: speed): without the topology's figures (``params``) a live cluster check does not know them.
SIZING_RULES = frozenset({"TP004", "TP005"})


def check_cluster_live(
    cluster: Any, *, params: PreflightParams | None = None, nodes_max: int = 256
) -> list[Finding]:
    """Every node of a running Redis Cluster (``RedisCluster``: primaries and replicas, as its
    slot map names them, at most ``nodes_max``), each judged by :func:`check_live` with its
    role: the cluster rules (TP012 ``cluster-node-timeout``, TP014 full coverage) and the 2013
    defects (TP001, TP002...) on ANY node, a replica too (it becomes a primary at failover).
    Each finding's title names its node. TP013 (placement over data centers) needs the
    topology file: ``tally preflight --topology``. Without ``params`` (``tally serve`` knows no
    topology) the sizing rules (``SIZING_RULES``) are judged against the default profile's
    figures, which are not this deployment's: their errors are reported as warnings."""
    sized = params is not None
    params = params or PreflightParams.single_node()
    findings: list[Finding] = []
    # A node that cannot be asked is a warning (TP015), not an error.
    try:
        nodes = list(cluster.get_nodes())[:nodes_max]
    except (redis.RedisError, RedisClusterException) as exc:
        raise StoreUnavailable(f"cannot list the cluster's nodes: {exc}") from exc
    for node in nodes:
        role = "primary" if node.server_type == "primary" else "replica"
        try:
            conn = cluster.get_redis_connection(node)
            found = check_live(conn, role=role, params=params)
        except (StoreUnavailable, redis.RedisError, RedisClusterException, OSError) as exc:
            found = [
                Finding(
                    "TP015",
                    Severity.WARNING,
                    "the node did not answer: not judged",
                    str(exc),
                    "bring the node back and run `tally preflight` on it",
                )
            ]
        for f in found:
            if not sized and f.rule_id in SIZING_RULES and f.severity is Severity.ERROR:
                f = replace(f, severity=Severity.WARNING, title=f"{f.title} (default sizing)")
            findings.append(replace(f, title=f"{node.name} ({role}): {f.title}"))
    return findings


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)


def _text_dict(raw: dict[Any, Any]) -> dict[str, str]:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return {text(k): text(v) for k, v in raw.items()}


def _default_user_has_password(client: redis.Redis) -> bool:
    try:
        user = client.acl_getuser("default") or {}
    except redis.ResponseError:
        return False  # ACL missing (very old Redis) or not allowed: assume no password
    raw_flags: Any = user.get("flags") or []
    flags = [f.decode() if isinstance(f, bytes) else str(f) for f in raw_flags]
    return "nopass" not in flags and bool(user.get("passwords"))


def _live_data(
    client: redis.Redis, config: dict[str, str], info: dict[str, Any]
) -> DataFacts | None:
    host = str(client.connection_pool.connection_kwargs.get("host", ""))
    if not is_loopback(host):
        return None  # its files are on another machine
    version = tuple(int(x) for x in str(info.get("redis_version", "7.0")).split(".")[:2])
    names = FileNames.of(lambda name, default: config.get(name) or default)
    return data_facts(Path(config.get("dir", ".")), names, (version[0], version[1]))
