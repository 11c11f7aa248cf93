"""The topology file: data centers, Redis nodes, Sentinels and the links between data centers.

A topology is TOML (see ``examples/topology-3dc.toml``)::

    name = "3dc"
    profile = "hardened"            # or "2013"
    base_dir = "run/3dc"            # relative to the file; every process gets a folder in it
    master_name = "tally"           # the Sentinel master name
    clients_dc = "dc1"              # where clients that are in no data center's address range
                                    # sit (default: the primary's data center)

    [params]                        # optional, see tally.ops.profiles.ProfileParams
    write_rate_bytes_per_s = 1_000_000

    [[dc]]
    name = "dc1"

    [[node]]
    name = "r1"
    dc = "dc1"
    role = "primary"

    [[sentinel]]
    dc = "dc1"                      # name defaults to "s-<dc>"

    [[link]]
    between = ["dc1", "dc2"]
    bandwidth_bytes_per_s = 12_500_000   # 0 = unlimited
    latency_ms = 20

A ``kind = "redis-cluster"`` topology (see ``examples/topology-cluster-3dc.toml``) is a Redis
Cluster instead: at least :data:`CLUSTER_SHARDS_MIN` shards, every ``[[node]]`` names its
``shard``, each shard has exactly one ``role = "primary"`` (the node that gets the shard's
slots when tally forms the cluster) and its replicas; no ``[[sentinel]]`` (the cluster fails
over by itself). Whether every primary has a replica in another data center is a preflight
finding (TP013), not a parse error, so a file that lacks one can still be checked and run::

    kind = "redis-cluster"
    [[node]]
    name = "a1"
    dc = "dc1"
    shard = "s1"
    role = "primary"

Every pair of data centers needs a link: after a failover the primary can sit in any of them.
Traffic between processes in different data centers goes through the link's fault proxy
(addressing: :mod:`tally.ops.cluster.core`).
Validation raises :class:`tally.errors.ConfigError` naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tally.errors import ConfigError

ROLES = ("primary", "replica")
PROFILES = ("2013", "hardened")
KIND_REPLICATED = "replicated"  # one primary, its replicas, Sentinels (the default)
KIND_CLUSTER = "redis-cluster"
KINDS = (KIND_REPLICATED, KIND_CLUSTER)
#: Fewer primaries cannot keep a majority of primaries when one fails: no failover.
CLUSTER_SHARDS_MIN = 3
NODES_MAX = 32
DCS_MAX = 16
LATENCY_MS_MAX = 10_000
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    dc: str
    role: str  # "primary" or "replica": the role at first start
    shard: str = ""  # redis-cluster topologies: the shard this node belongs to


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """One shard of a redis-cluster topology: the primary at first start and its replicas."""

    name: str
    primary: NodeSpec
    replicas: tuple[NodeSpec, ...]

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return (self.primary, *self.replicas)


@dataclass(frozen=True, slots=True)
class SentinelSpec:
    name: str
    dc: str


@dataclass(frozen=True, slots=True)
class LinkSpec:
    a: str
    b: str
    bandwidth_bytes_per_s: int = 0  # 0 = unlimited
    latency_ms: int = 0

    @property
    def name(self) -> str:
        return f"{self.a}-{self.b}"

    def joins(self, dc_x: str, dc_y: str) -> bool:
        return {self.a, self.b} == {dc_x, dc_y}


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    profile: str
    base_dir: Path
    dcs: tuple[str, ...]
    nodes: tuple[NodeSpec, ...]
    sentinels: tuple[SentinelSpec, ...]
    links: tuple[LinkSpec, ...]
    master_name: str = "tally"
    params: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    clients_dc: str = ""  # "" = the (first) primary's data center
    kind: str = KIND_REPLICATED

    @property
    def is_cluster(self) -> bool:
        return self.kind == KIND_CLUSTER

    @property
    def client_dc(self) -> str:
        """The data center of clients that have no address of their own (tools, engines)."""
        return self.clients_dc or self.primaries[0].dc

    @property
    def primary(self) -> NodeSpec:
        """The one primary of a replicated topology (a cluster has one per shard)."""
        if self.is_cluster:
            raise ConfigError(
                f"{self.source}: a redis-cluster topology has one primary per shard",
                hint="use Topology.primaries or Topology.shards",
            )
        return self.primaries[0]

    @property
    def primaries(self) -> tuple[NodeSpec, ...]:
        return tuple(n for n in self.nodes if n.role == "primary")

    @property
    def shards(self) -> tuple[ShardSpec, ...]:
        """redis-cluster: the shards in file order (slots are assigned in this order)."""
        out = []
        for primary in self.primaries:
            replicas = tuple(n for n in self.replicas if n.shard == primary.shard)
            out.append(ShardSpec(primary.shard, primary, replicas))
        return tuple(out)

    def shard_of(self, node_name: str) -> ShardSpec:
        shard = self.node(node_name).shard
        return next(s for s in self.shards if s.name == shard)

    @property
    def replicas(self) -> tuple[NodeSpec, ...]:
        return tuple(n for n in self.nodes if n.role == "replica")

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise ConfigError(f"{self.source}: no node named {name!r}", hint=f"known nodes: {known}")

    def link(self, dc_x: str, dc_y: str) -> LinkSpec:
        for link in self.links:
            if link.joins(dc_x, dc_y):
                return link
        raise ConfigError(
            f"{self.source}: no [[link]] between {dc_x} and {dc_y}",
            hint=f'add [[link]] between = ["{dc_x}", "{dc_y}"]',
        )

    def with_profile(self, profile: str) -> Topology:
        _check_choice(self.source, "profile", profile, PROFILES)
        return _replace(self, profile=profile)

    def with_base_dir(self, base_dir: Path) -> Topology:
        return _replace(self, base_dir=Path(base_dir))


def _replace(topology: Topology, **changes: Any) -> Topology:
    return dataclasses.replace(topology, **changes)


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file; ``base_dir`` is resolved relative to the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read topology {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return parse_topology(data, source=str(path), relative_to=path.parent)


def parse_topology(
    data: Mapping[str, Any], *, source: str = "<memory>", relative_to: Path | None = None
) -> Topology:
    _check_keys(source, "top level", data, _TOP_KEYS)
    name = _name(source, "name", data.get("name", "topology"))
    kind = str(data.get("kind", KIND_REPLICATED))
    _check_choice(source, "kind", kind, KINDS)
    profile = str(data.get("profile", "hardened"))
    _check_choice(source, "profile", profile, PROFILES)
    base_dir = Path(_required(source, "base_dir", data.get("base_dir")))
    if not base_dir.is_absolute():
        base_dir = (relative_to or Path.cwd()) / base_dir
    dcs = _parse_dcs(source, data.get("dc", []))
    nodes = _parse_nodes(source, data.get("node", []), dcs, kind)
    sentinels = _parse_sentinels(source, data.get("sentinel", []), dcs, nodes)
    if kind == KIND_CLUSTER and sentinels:
        raise ConfigError(
            f"{source}: a redis-cluster topology has no [[sentinel]]",
            hint="the cluster fails over by itself: remove the [[sentinel]] tables",
        )
    links = _parse_links(source, data.get("link", []), dcs)
    params = data.get("params", {})
    if not isinstance(params, Mapping):
        raise ConfigError(f"{source}: [params] must be a table", hint="write [params] key = value")
    master_name = _name(source, "master_name", data.get("master_name", "tally"))
    clients_dc = str(data.get("clients_dc", ""))
    if clients_dc and clients_dc not in dcs:
        raise ConfigError(
            f"{source}: clients_dc = {clients_dc!r} is not a declared data center",
            hint=f"use one of {', '.join(dcs)}, or leave it out (the primary's data center)",
        )
    return Topology(
        name,
        profile,
        base_dir,
        dcs,
        nodes,
        sentinels,
        links,
        master_name,
        dict(params),
        source,
        clients_dc,
        kind,
    )


_TOP_KEYS = {
    "name",
    "kind",
    "profile",
    "base_dir",
    "master_name",
    "clients_dc",
    "params",
    "dc",
    "node",
    "sentinel",
    "link",
}


def _check_keys(source: str, where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} in {where}",
            hint=f"allowed keys: {', '.join(sorted(allowed))}",
        )


def _check_choice(source: str, field_name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{source}: {field_name} = {value!r} is not one of {', '.join(choices)}",
            hint=f"set {field_name} to one of {', '.join(choices)}",
        )


def _required(source: str, field_name: str, value: Any) -> Any:
    if value is None or value == "":
        raise ConfigError(f"{source}: {field_name} is missing", hint=f"add {field_name} = ...")
    return value


def _name(source: str, field_name: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigError(
            f"{source}: {field_name} = {value!r} is not a valid name",
            hint="names are 1-32 characters of a-z, 0-9, '_' or '-'",
        )
    return value


def _tables(source: str, key: str, value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise ConfigError(f"{source}: {key} must be an array of tables", hint=f"write [[{key}]]")
    return value


def _parse_dcs(source: str, raw: Any) -> tuple[str, ...]:
    tables = _tables(source, "dc", raw)
    if not 1 <= len(tables) <= DCS_MAX:
        raise ConfigError(
            f"{source}: {len(tables)} [[dc]] tables", hint=f"declare 1..{DCS_MAX} data centers"
        )
    names = []
    for i, table in enumerate(tables):
        _check_keys(source, f"dc[{i}]", table, {"name"})
        names.append(_name(source, f"dc[{i}].name", table.get("name")))
    _unique(source, "dc", names)
    return tuple(names)


def _unique(source: str, what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{source}: {what} name {name!r} is used twice", hint="rename one")
        seen.add(name)


def _dc_of(source: str, where: str, table: Mapping[str, Any], dcs: tuple[str, ...]) -> str:
    dc = _name(source, f"{where}.dc", table.get("dc"))
    if dc not in dcs:
        raise ConfigError(
            f"{source}: {where}.dc = {dc!r} is not a declared data center",
            hint=f"declare [[dc]] name = {dc!r} or use one of {', '.join(dcs)}",
        )
    return dc


def _parse_nodes(
    source: str, raw: Any, dcs: tuple[str, ...], kind: str = KIND_REPLICATED
) -> tuple[NodeSpec, ...]:
    tables = _tables(source, "node", raw)
    if not 1 <= len(tables) <= NODES_MAX:
        raise ConfigError(
            f"{source}: {len(tables)} [[node]] tables", hint=f"declare 1..{NODES_MAX} nodes"
        )
    nodes = []
    for i, table in enumerate(tables):
        where = f"node[{i}]"
        _check_keys(source, where, table, {"name", "dc", "role", "shard"})
        role = str(table.get("role", "replica"))
        _check_choice(source, f"{where}.role", role, ROLES)
        name = _name(source, f"{where}.name", table.get("name"))
        shard = _shard(source, where, table, kind)
        nodes.append(NodeSpec(name, _dc_of(source, where, table, dcs), role, shard))
    _unique(source, "node", [n.name for n in nodes])
    if kind == KIND_CLUSTER:
        _check_shards(source, nodes)
        return tuple(nodes)
    primaries = [n.name for n in nodes if n.role == "primary"]
    if len(primaries) != 1:
        raise ConfigError(
            f'{source}: {len(primaries)} nodes have role = "primary" ({", ".join(primaries)})',
            hint='give exactly one [[node]] role = "primary"; the others role = "replica"',
        )
    return tuple(nodes)


def _shard(source: str, where: str, table: Mapping[str, Any], kind: str) -> str:
    if kind != KIND_CLUSTER:
        if "shard" in table:
            raise ConfigError(
                f"{source}: {where}.shard is set but kind is not {KIND_CLUSTER!r}",
                hint=f'set kind = "{KIND_CLUSTER}" at the top, or remove shard',
            )
        return ""
    return _name(source, f"{where}.shard", table.get("shard"))


def _check_shards(source: str, nodes: list[NodeSpec]) -> None:
    """Each shard exactly one primary; enough shards for a majority of primaries to survive
    the loss of one (a failover needs that majority's votes)."""
    shards = list(dict.fromkeys(n.shard for n in nodes))
    for shard in shards:
        primaries = [n.name for n in nodes if n.shard == shard and n.role == "primary"]
        if len(primaries) != 1:
            raise ConfigError(
                f"{source}: shard {shard!r} has {len(primaries)} primaries "
                f"({', '.join(primaries) or 'none'})",
                hint='give each shard exactly one [[node]] role = "primary"',
            )
    if len(shards) < CLUSTER_SHARDS_MIN:
        raise ConfigError(
            f"{source}: {len(shards)} shard(s); a redis-cluster topology needs at least "
            f"{CLUSTER_SHARDS_MIN}",
            hint="with fewer primaries, losing one leaves no majority to elect its replica",
        )


def _parse_sentinels(
    source: str, raw: Any, dcs: tuple[str, ...], nodes: tuple[NodeSpec, ...]
) -> tuple[SentinelSpec, ...]:
    sentinels = []
    for i, table in enumerate(_tables(source, "sentinel", raw)):
        where = f"sentinel[{i}]"
        _check_keys(source, where, table, {"name", "dc"})
        dc = _dc_of(source, where, table, dcs)
        sentinels.append(
            SentinelSpec(_name(source, f"{where}.name", table.get("name", f"s-{dc}")), dc)
        )
    _unique(source, "sentinel/node", [s.name for s in sentinels] + [n.name for n in nodes])
    if sentinels and len(sentinels) < 3:
        raise ConfigError(
            f"{source}: {len(sentinels)} Sentinels cannot elect a leader with quorum 2 safely",
            hint="declare at least 3 [[sentinel]] (one per data center), or none",
        )
    return tuple(sentinels)


def _parse_links(source: str, raw: Any, dcs: tuple[str, ...]) -> tuple[LinkSpec, ...]:
    links = []
    for i, table in enumerate(_tables(source, "link", raw)):
        where = f"link[{i}]"
        _check_keys(source, where, table, {"between", "bandwidth_bytes_per_s", "latency_ms"})
        between = table.get("between")
        if not isinstance(between, list) or len(between) != 2 or between[0] == between[1]:
            raise ConfigError(
                f"{source}: {where}.between = {between!r}",
                hint='name two different data centers: between = ["dc1", "dc2"]',
            )
        ends = [_dc_of(source, where, {"dc": dc}, dcs) for dc in between]
        bandwidth = _int(source, f"{where}.bandwidth_bytes_per_s", table, 0, 0, 10**11)
        latency = _int(source, f"{where}.latency_ms", table, 0, 0, LATENCY_MS_MAX)
        links.append(LinkSpec(ends[0], ends[1], bandwidth, latency))
    _unique(source, "link", ["-".join(sorted((lk.a, lk.b))) for lk in links])
    for dc_x, dc_y in itertools.combinations(dcs, 2):
        if not any(lk.joins(dc_x, dc_y) for lk in links):
            raise ConfigError(
                f"{source}: no [[link]] between {dc_x} and {dc_y}",
                hint=f'every pair of data centers needs one: between = ["{dc_x}", "{dc_y}"]',
            )
    return tuple(links)


def _int(
    source: str, field_name: str, table: Mapping[str, Any], default: int, low: int, high: int
) -> int:
    value = table.get(field_name.rsplit(".", 1)[-1], default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"{source}: {field_name} = {value!r}", hint=f"use an integer in {low}..{high}"
        )
    return value
