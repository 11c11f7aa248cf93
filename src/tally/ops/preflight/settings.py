"""What the rules look at: one ``NodeSettings``, built from a redis.conf plus its data dir, or
from a live node's ``CONFIG GET *`` and ``INFO``."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tally.errors import ConfigError
from tally.ops.preflight.conf import RedisConf, parse_memory

#: Every directive a rule reads from a redis.conf (``from_conf``). Each config tally generates
#: states all of them, so no server version's default decides a finding (test:
#: tests/preflight/test_generated_configs.py). ``appenddirname`` exists from Redis 7.0 on.
PREFLIGHT_READS = (
    "port",
    "bind",
    "requirepass",
    "appendonly",
    "save",
    "replicaof",
    "repl-backlog-size",
    "client-output-buffer-limit",
    "maxmemory",
    "maxmemory-policy",
    "repl-diskless-sync",
    "repl-diskless-sync-delay",
    "min-replicas-to-write",
    "dir",
    "dbfilename",
    "appendfilename",
)
PREFLIGHT_READS_7 = ("appenddirname",)
#: Read as well on every node (``cluster-enabled``: whether the cluster rules apply) and by the
#: cluster rules TP012 and TP014; every generated config states ``cluster-enabled`` and a
#: cluster node's config all of them (tests/preflight/test_cluster_rules.py).
PREFLIGHT_READS_CLUSTER = (
    "cluster-enabled",
    "cluster-node-timeout",
    "cluster-require-full-coverage",
    "min-replicas-max-lag",
)

DEFAULT_SAVE = ((3600, 1), (300, 100), (60, 10000))
DEFAULT_REPLICA_OBL = (256 * 1024**2, 64 * 1024**2, 60)


@dataclass(frozen=True)
class DataFacts:
    """What lies in the data dir: the files a restart would load."""

    dir: Path
    rdb_path: Path
    rdb_bytes: int | None  # None: no RDB file
    aof_present: bool  # an AOF redis-server would load (Redis 7 manifest, or 6.2 single file)
    aof_description: str


@dataclass(frozen=True)
class NodeSettings:
    port: int
    binds: tuple[str, ...] | None  # None: no bind directive, all interfaces
    auth: bool
    appendonly: bool
    save_points: tuple[tuple[int, int], ...]
    replicaof: tuple[str, int] | None
    backlog_bytes: int
    replica_obl: tuple[int, int, int]  # hard bytes, soft bytes, soft seconds
    maxmemory_bytes: int
    maxmemory_policy: str
    diskless_sync: bool
    diskless_delay_s: int
    min_replicas_to_write: int
    data: DataFacts | None = None
    used_memory_bytes: int | None = None  # live only
    keys_total: int | None = None  # live only
    connected_replicas: int | None = None  # live only
    # Cluster mode (Redis's defaults when unstated; tally states them: PREFLIGHT_READS_CLUSTER).
    cluster_enabled: bool = False
    cluster_node_timeout_ms: int = 15000
    cluster_require_full_coverage: bool = True
    min_replicas_max_lag_s: int = 10
    replica_link_up: bool = False  # live only: a replica whose link to its primary is up


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.lstrip("-")).is_loopback
    except ValueError:
        return False


# -- from a file ---------------------------------------------------------------------------------
def _save_points(conf: RedisConf) -> tuple[tuple[int, int], ...]:
    lines = conf.all("save")
    if not lines:
        return DEFAULT_SAVE
    points: list[tuple[int, int]] = []
    for line in lines:
        if line.args in ((), ("",)):
            points.clear()  # save "" removes every save point
            continue
        if len(line.args) % 2:
            raise ConfigError(f"{conf.path}:{line.line}: save needs pairs of seconds and changes")
        try:
            numbers = [int(a) for a in line.args]
        except ValueError as exc:
            raise ConfigError(f"{conf.path}:{line.line}: save: {exc}") from exc
        points.extend(zip(numbers[::2], numbers[1::2], strict=True))
    return tuple(points)


def _replica_obl(conf: RedisConf) -> tuple[int, int, int]:
    found = DEFAULT_REPLICA_OBL
    for line in conf.all("client-output-buffer-limit"):
        args = line.args
        if len(args) % 4:
            raise ConfigError(f"{conf.path}:{line.line}: client-output-buffer-limit needs 4 args")
        for i in range(0, len(args), 4):
            if args[i].lower() in ("replica", "slave"):
                try:
                    found = (parse_memory(args[i + 1]), parse_memory(args[i + 2]), int(args[i + 3]))
                except ValueError as exc:
                    raise ConfigError(f"{conf.path}:{line.line}: {exc}") from exc
    return found


def _replicaof(conf: RedisConf) -> tuple[str, int] | None:
    line = conf.last("replicaof")
    if line is None or [a.lower() for a in line.args] == ["no", "one"]:
        return None
    if len(line.args) != 2 or not line.args[1].isdigit():
        raise ConfigError(f"{conf.path}:{line.line}: replicaof needs a host and a port")
    return line.args[0], int(line.args[1])


def _file_auth(conf: RedisConf) -> bool:
    if conf.value("requirepass", "") or conf.last("aclfile") is not None:
        return True
    for user in conf.all("user"):
        rules = user.args[1:]
        if user.args[:1] == ("default",) and "nopass" not in rules:
            return any(r.startswith((">", "#")) for r in rules) or "off" in rules
    return False


@dataclass(frozen=True)
class FileNames:
    dbfilename: str = "dump.rdb"
    appendfilename: str = "appendonly.aof"
    appenddirname: str = "appendonlydir"

    @classmethod
    def of(cls, get: Callable[[str, str], str]) -> FileNames:
        return cls(*(get(name, default) for name, default in asdict(cls()).items()))


def data_facts(data_dir: Path, names: FileNames, version: tuple[int, int]) -> DataFacts:
    rdb = data_dir / names.dbfilename
    aof_name = names.appendfilename
    single = data_dir / aof_name  # 6.2 layout; 7.x upgrades such a file on start
    manifest = data_dir / names.appenddirname / f"{aof_name}.manifest"
    single_ok = single.is_file() and single.stat().st_size > 0
    if version >= (7, 0) and manifest.is_file():
        present, what = True, f"AOF manifest {manifest}"
    elif single_ok:
        present, what = True, f"AOF file {single}"
    else:
        looked = f"{manifest} or {single}" if version >= (7, 0) else str(single)
        present, what = False, f"no AOF (looked for {looked})"
    rdb_bytes = rdb.stat().st_size if rdb.is_file() else None
    return DataFacts(data_dir, rdb, rdb_bytes, present, what)


def from_conf(conf: RedisConf, data_dir: Path | None, version: tuple[int, int]) -> NodeSettings:
    bind = conf.last("bind")
    if data_dir is None:
        configured = Path(conf.value("dir", "."))
        base = conf.path.parent if conf.path is not None else Path.cwd()
        data_dir = configured if configured.is_absolute() else base / configured
    return NodeSettings(
        port=conf.integer("port", 6379),
        binds=bind.args if bind is not None else None,
        auth=_file_auth(conf),
        appendonly=conf.flag("appendonly", False),
        save_points=_save_points(conf),
        replicaof=_replicaof(conf),
        backlog_bytes=conf.memory("repl-backlog-size", 1024**2),
        replica_obl=_replica_obl(conf),
        maxmemory_bytes=conf.memory("maxmemory", 0),
        maxmemory_policy=conf.value("maxmemory-policy", "noeviction").lower(),
        diskless_sync=conf.flag("repl-diskless-sync", version >= (7, 0)),
        diskless_delay_s=conf.integer("repl-diskless-sync-delay", 5),
        min_replicas_to_write=conf.integer("min-replicas-to-write", 0),
        data=data_facts(data_dir, FileNames.of(conf.value), version),
        cluster_enabled=conf.flag("cluster-enabled", False),
        cluster_node_timeout_ms=conf.integer("cluster-node-timeout", 15000),
        cluster_require_full_coverage=conf.flag("cluster-require-full-coverage", True),
        min_replicas_max_lag_s=conf.integer("min-replicas-max-lag", 10),
    )


# -- from a live node ----------------------------------------------------------------------------
def _live_obl(text: str) -> tuple[int, int, int]:
    words = text.split()
    for i in range(0, len(words) - 3, 4):
        if words[i] in ("replica", "slave"):
            return int(words[i + 1]), int(words[i + 2]), int(words[i + 3])
    return DEFAULT_REPLICA_OBL


def _live_save(text: str) -> tuple[tuple[int, int], ...]:
    numbers = [int(word) for word in text.split()]
    return tuple(zip(numbers[::2], numbers[1::2], strict=True))


def from_live(
    config: dict[str, str], info: dict[str, Any], data: DataFacts | None, *, auth: bool
) -> NodeSettings:
    replicaof = None
    if info.get("role") == "slave":
        replicaof = (str(info.get("master_host", "")), int(info.get("master_port", 0)))
    keys = sum(int(v["keys"]) for k, v in info.items() if k.startswith("db") and "keys" in v)
    return NodeSettings(
        port=int(config.get("port", 6379)),
        binds=tuple(config.get("bind", "").split()) or None,
        auth=auth,
        appendonly=config.get("appendonly") == "yes",
        save_points=_live_save(config.get("save", "")),
        replicaof=replicaof,
        backlog_bytes=int(config.get("repl-backlog-size", 1024**2)),
        replica_obl=_live_obl(config.get("client-output-buffer-limit", "")),
        maxmemory_bytes=int(config.get("maxmemory", 0)),
        maxmemory_policy=config.get("maxmemory-policy", "noeviction"),
        diskless_sync=config.get("repl-diskless-sync") == "yes",
        diskless_delay_s=int(config.get("repl-diskless-sync-delay", 5)),
        min_replicas_to_write=int(config.get("min-replicas-to-write", 0)),
        data=data,
        used_memory_bytes=int(info.get("used_memory", 0)) or None,
        keys_total=keys,
        connected_replicas=int(info.get("connected_slaves", 0)),
        cluster_enabled=config.get("cluster-enabled") == "yes",
        cluster_node_timeout_ms=int(config.get("cluster-node-timeout", 15000)),
        cluster_require_full_coverage=config.get("cluster-require-full-coverage", "yes") == "yes",
        min_replicas_max_lag_s=int(config.get("min-replicas-max-lag", 10)),
        replica_link_up=info.get("role") == "slave" and info.get("master_link_status") == "up",
    )
