"""The processes of one lab run, started together and always stopped together.

A three-data-center topology (``r1`` primary in dc1, replicas ``r2`` in dc2 and ``r3`` in dc3,
one Sentinel per data center in the hardened profile), each data center on its own loopback
address and every process behind its front (``tally.ops.cluster``): replication, Sentinel and
the subject's ``tally serve`` processes (dc1 and dc2, ``tally.lab.serve``) cross data centers
only through the fault proxies, with
a WAN bandwidth cap and latency on every inter-DC link; a ballast dataset on the primary so a
full sync has real work to do; the gateway simulator; the ledger of record (a SQLite file in
the run directory, or a fresh PostgreSQL database: ``tally.lab.ledger_db``), which each serve
reaches through a link of its own when it is PostgreSQL. The lab's own probes (monitor, pinger, checker) use the real addresses.

Everything listens on loopback (127.0.k.1) ports below the ephemeral range: nothing touches 6379.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from tally.errors import ConfigError, ProcessError, TallyError
from tally.gateway.faults import Faults
from tally.gateway.process import SimulatorProcess
from tally.lab.ledger_db import LabLedger
from tally.ops.ballast import incompressible
from tally.ops.cluster import Cluster, ClusterNode
from tally.ops.cluster.procs import command
from tally.ops.cluster.state import RouteState
from tally.ops.faultproxy import LinkSpec as ProxyLinkSpec
from tally.ops.node import ConfigValue
from tally.ops.topology import Topology, parse_topology
from tally.store.keys import SHARDS_DEFAULT

NAMESPACE = "tally"
SHARDS = SHARDS_DEFAULT  # what `tally serve` initialises a new deployment with
BALLAST_VALUE_BYTES = 1000
BALLAST_PIPELINE = 1000
DATASET_BYTES_MAX = 2_000_000_000
SYNC_WAIT_S = 60.0
ONE_PRIMARY_POLL_S = 0.2
BALLAST_DB = 1  # ballast and extra write load live here, away from tally's database 0


@dataclass(frozen=True)
class RigSpec:
    profile: str
    dataset_bytes: int = 16_000_000  # ballast on the primary: what a full sync has to move
    wan_bytes_per_s: int = 4_000_000  # cap on every inter-DC link (per route and direction)
    rdb_key_save_delay_us: int = 0  # slows BGSAVE per key (the overloaded primary)
    min_replicas_to_write: int | None = None  # None: the profile's value
    buffer_limit_2013: str | None = None  # client-output-buffer-limit for the 2013 profile
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.dataset_bytes <= DATASET_BYTES_MAX:
            raise ValueError(f"dataset_bytes must be 0..{DATASET_BYTES_MAX}")


LAB_PARAMS: dict[str, Any] = {
    "write_rate_bytes_per_s": 400_000,
    "partition_s_max": 30,
    "safety_factor": 2,
    "dataset_bytes_max": 64_000_000,
    "diskless_sync_delay_s": 1,
    "min_replicas_max_lag_s": 10,
    # Longer than the incident's network blip (a few seconds: the replicas reconnect, Sentinel
    # must not fail over), shorter than a partition that isolates the primary's DC (15 s).
    "sentinel_down_after_ms": 5000,
    "sentinel_failover_timeout_ms": 10000,
}


def lab_topology(base_dir: Path, spec: RigSpec) -> Topology:
    dcs = ["dc1", "dc2", "dc3"]
    latency = {("dc1", "dc2"): 10, ("dc1", "dc3"): 30, ("dc2", "dc3"): 25}
    data = {
        "name": "lab",
        "profile": spec.profile,
        "base_dir": str(base_dir),
        "params": {**LAB_PARAMS, **spec.params},
        "dc": [{"name": d} for d in dcs],
        "node": [
            {"name": "r1", "dc": "dc1", "role": "primary"},
            {"name": "r2", "dc": "dc2", "role": "replica"},
            {"name": "r3", "dc": "dc3", "role": "replica"},
        ],
        "sentinel": [{"dc": d} for d in dcs],
        "link": [
            {"between": list(pair), "bandwidth_bytes_per_s": spec.wan_bytes_per_s,
             "latency_ms": ms}
            for pair, ms in latency.items()
        ],
    }  # fmt: skip
    return parse_topology(data, source="lab")


class Rig:
    """``with Rig(out_dir, spec) as rig:`` cluster up, ballast loaded, simulator running."""

    #: the topology a rig runs (``tally.lab.cluster_rig`` gives a Redis Cluster's)
    topology_for = staticmethod(lab_topology)

    def __init__(self, out_dir: Path, spec: RigSpec, *, gateway_faults: Faults | None = None,
                 ledger: LabLedger | None = None):  # fmt: skip
        self.out_dir = Path(out_dir)
        self.spec = spec
        self.cluster_dir = self.out_dir / "cluster"
        self.topology = self.topology_for(self.cluster_dir, spec)
        self.cluster = Cluster(self.topology, profile=spec.profile)
        self.simulator = SimulatorProcess(
            data_dir=self.out_dir / "gateway", faults=gateway_faults or Faults()
        )
        self.ledger_path = self.out_dir / "ledger.sqlite3"
        self.ledger = ledger or LabLedger.sqlite(self.out_dir)
        self.serve_links: dict[str, tuple[str, int]] = {}
        self.original_directives: dict[str, dict[str, ConfigValue]] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Rig:
        if self.cluster_dir.exists():
            shutil.rmtree(self.cluster_dir)
        try:
            self.cluster.start()
            self.original_directives = {n: dict(h.node.directives) for n, h in self.nodes.items()}
            self._tune()
            self.load_ballast()
            self.cluster.wait_replicas_in_sync(SYNC_WAIT_S)
            self.wait_caught_up(SYNC_WAIT_S)
            self.simulator.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _tune(self) -> None:
        if self.spec.rdb_key_save_delay_us:
            self.config_set_all("rdb-key-save-delay", str(self.spec.rdb_key_save_delay_us))
        if self.spec.buffer_limit_2013 and self.spec.profile == "2013":
            self.config_set_all("client-output-buffer-limit", self.spec.buffer_limit_2013)
        if self.spec.min_replicas_to_write is not None:
            self.config_set_all("min-replicas-to-write", str(self.spec.min_replicas_to_write))

    def wait_caught_up(self, timeout_s: float) -> None:
        """Every replica has processed the primary's replication stream up to the offset it
        had when this was called (the ballast went through capped links: a link "up" says
        nothing about how far behind it is). Bounded; ``ProcessError`` on timeout."""
        primary = self.nodes[self.topology.primary.name]
        with contextlib.closing(primary.client(socket_timeout=5.0)) as c:
            target = int(c.info("replication").get("master_repl_offset", 0))
        deadline = time.monotonic() + timeout_s
        behind = [n.name for n in self.topology.replicas]
        while behind and time.monotonic() < deadline:
            behind = [n for n in behind if self._replica_offset(n) < target]
            if behind:
                time.sleep(0.1)
        if behind:
            raise ProcessError(f"replicas not caught up within {timeout_s}s: {', '.join(behind)}")

    def _replica_offset(self, node: str) -> int:
        try:
            with contextlib.closing(self.nodes[node].client(socket_timeout=2.0)) as c:
                info = c.info("replication")
        except (redis.RedisError, OSError):
            return -1
        if info.get("master_link_status") != "up":
            return -1
        return int(info.get("slave_repl_offset", -1))

    def config_set_all(self, key: str, value: str) -> None:
        for name, handle in self.nodes.items():
            with contextlib.closing(handle.client(socket_timeout=5.0)) as c:
                c.config_set(key, value)
            handle.node.directives[key] = value
            self.original_directives[name][key] = value

    def stop(self) -> None:
        """Every process, whatever state the run left it in (paused nodes are resumed first)."""
        errors: list[Exception] = []
        for handle in [*self.nodes.values(), *self.cluster.sentinels.values()]:
            with contextlib.suppress(TallyError, OSError):
                handle.resume()
        try:
            self.simulator.stop()
        except (TallyError, OSError) as exc:
            errors.append(exc)
        try:
            self.cluster.stop()
        except (TallyError, OSError) as exc:
            errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addressing ----------------------------------------------------------------------------
    @property
    def nodes(self) -> dict[str, ClusterNode]:
        return self.cluster.nodes

    @property
    def password(self) -> str | None:
        return self.cluster.password

    @property
    def hardened(self) -> bool:
        return self.spec.profile == "hardened"

    def redis_url(self) -> str:
        """What the billing engine (in dc1) is configured with: Sentinel in the hardened
        profile, the primary's address in 2013 (as the incident's clients had); fronts both,
        so the engine reaches another data center only through its link."""
        if self.cluster.with_sentinels:
            auth = f":{self.password}@" if self.password else ""
            hosts = ",".join(f"{h}:{p}" for h, p in self.cluster.sentinel_addresses())
            return f"sentinel://{auth}{hosts}/{self.topology.master_name}"
        host, port = self.cluster.reach(self.topology.client_dc, self.topology.primary.name)
        return f"redis://{host}:{port}/0"

    def ledger_url(self) -> str:
        """The ledger as the lab's own tools (and the in-process control) reach it: directly."""
        return self.ledger.url

    # -- the subject's own links ---------------------------------------------------------------
    #: where the ledger of record sits (its links from other data centers carry their latency
    #: and are cut by a partition of that pair, like every route)
    LEDGER_DC = "dc1"

    def serve_link(self, dc: str, target: str) -> tuple[str, int]:
        """A proxy link only the serve of data center ``dc`` uses to reach ``target``
        (``ledger``: PostgreSQL; ``gateway``: the simulator), listening on ``dc``'s address:
        ``cut_serve`` partitions it alone; a partition between ``dc`` and the ledger's data
        center cuts the ledger link too."""
        name = f"serve-{dc}-to-{target}"
        if name in self.serve_links:
            return self.serve_links[name]
        if target == "ledger":
            upstream = self.ledger.address
            pair = self.topology.link(dc, self.LEDGER_DC).name if dc != self.LEDGER_DC else ""
        elif target == "gateway":
            parts = urlsplit(self.simulator.url)
            upstream, pair = (parts.hostname or "127.0.0.1", int(parts.port or 80)), ""
        else:
            raise ConfigError(f"no serve link to {target!r}: ledger or gateway")
        hub = self.cluster.hub
        assert hub is not None
        listen = hub.add_link(ProxyLinkSpec(name, upstream[0], upstream[1],
                                            listen_host=self.cluster.dc_address(dc)))  # fmt: skip
        if pair:
            latency = self.topology.link(dc, self.LEDGER_DC).latency_ms
            if latency > 0:
                hub.set_fault(name, "both", "latency", latency_ms=latency)
        self.cluster.routes[name] = RouteState(name, dc, target, pair, listen)
        self.serve_links[name] = listen
        return listen

    def serve_ledger_url(self, dc: str) -> str:
        """SQLite: the shared file (a file has no link to cut); PostgreSQL: through ``dc``'s link."""
        if self.ledger.kind == "sqlite":
            return self.ledger.url
        return self.ledger.through(*self.serve_link(dc, "ledger"))

    def serve_gateway_url(self, dc: str) -> str:
        host, port = self.serve_link(dc, "gateway")
        return f"http://{host}:{port}"

    def cut_serve(self, dc: str, target: str, mode: str = "drop") -> str:
        """Partition the serve of ``dc`` from ``target``: ``ledger`` or ``gateway`` (its own
        links), or ``primary``: the route from ``dc`` to the current primary's front, which the
        serve shares with its data center's replica and Sentinel (one data center's hosts share
        its network)."""
        hub = self.cluster.hub
        assert hub is not None
        if target == "primary":
            primary = self.current_primary()
            name = self.cluster.route_name(dc, primary.name if primary else "r1")
        else:
            name = f"serve-{dc}-to-{target}"
            if name not in self.serve_links:
                raise ConfigError(f"the serve of {dc} has no link to {target} (SQLite ledger?)")
        hub.set_fault(name, "both", "partition", mode=mode)
        return name

    def client(self, node: str, **overrides: Any) -> redis.Redis:
        return self.nodes[node].client(**overrides)

    def current_primary(self) -> ClusterNode | None:
        """A running node answering ROLE master (r1 first)."""
        return self.cluster.primary()

    def primaries(self) -> list[str]:
        """Every running node answering ROLE master (more than one: a split brain, e.g. an old
        primary back from a partition that Sentinel has not demoted yet)."""
        return [h.name for h in self.cluster.primaries()]

    def sentinel_primaries(self) -> list[str]:
        """The node each answering Sentinel names as the primary (none without Sentinels)."""
        by_front = {self.cluster.front(name): name for name in self.nodes}
        named = []
        for handle in self.cluster.sentinels.values():
            with (
                contextlib.suppress(redis.RedisError, OSError),
                contextlib.closing(handle.client(socket_timeout=1.0)) as c,
            ):
                addr = command(c, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.topology.master_name)
                if addr:
                    host = addr[0].decode() if isinstance(addr[0], bytes) else str(addr[0])
                    named.append(by_front.get((host, int(addr[1])), f"{host}:{addr[1]}"))
        return named

    def wait_one_primary(self, timeout_s: float) -> list[str]:
        """With Sentinels, wait (at most ``timeout_s``) until exactly one running node is a
        primary and every Sentinel that answers names it. Returns the primaries at the end. An old
        primary back from a partition stays a primary until Sentinel's next look at it (its
        INFO period, 10 s) demotes it: a state read before that reads a dataset about to be
        discarded."""
        deadline = time.monotonic() + timeout_s
        while True:
            primaries = self.primaries()
            if not self.cluster.with_sentinels:  # 2013: nobody demotes anything; do not wait
                return primaries
            if len(primaries) == 1 and set(self.sentinel_primaries()) == set(primaries):
                return primaries
            if time.monotonic() >= deadline:
                return primaries
            time.sleep(ONE_PRIMARY_POLL_S)

    def remote_dcs(self) -> list[str]:
        primary_dc = self.topology.primary.dc
        return sorted({n.dc for n in self.topology.nodes if n.dc != primary_dc})

    # -- data ------------------------------------------------------------------------------------
    def load_ballast(self) -> int:
        """Fill the primary with ``dataset_bytes`` of ballast, in database ``BALLAST_DB`` so
        tally's database holds only tally's keys (a full sync moves every database). The
        values are incompressible: RDB compresses each value with LZF, and a ballast of
        repeated bytes went over the wire at 1/25 of its size (a 6 MB dataset synced as a
        256 kB RDB), so no full sync was ever slow enough to overflow a buffer."""
        count = self.spec.dataset_bytes // BALLAST_VALUE_BYTES
        value = incompressible(BALLAST_VALUE_BYTES)
        with contextlib.closing(self.client("r1", socket_timeout=30.0, db=BALLAST_DB)) as c:
            for start in range(0, count, BALLAST_PIPELINE):
                with c.pipeline(transaction=False) as pipe:
                    for i in range(start, min(count, start + BALLAST_PIPELINE)):
                        pipe.set(f"lab:ballast:{i}", value)
                    pipe.execute()
        return count

    def wait_in_sync(self, timeout_s: float = SYNC_WAIT_S) -> bool:
        """Every running node is a primary or a replica with its link up; False on timeout."""
        try:
            self.cluster.wait_replicas_in_sync(timeout_s)
        except ProcessError:
            return False
        return True

    def wait_writable_primary(self, timeout_s: float) -> ClusterNode | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            primary = self.current_primary()
            if primary is not None:
                return primary
            time.sleep(0.1)
        return None
