"""The F1 measurement: every remote replica loses the primary at once, then comes back.

``run_storm`` starts the topology (no Sentinel: this measures replication, and a partition longer
than ``down-after`` would otherwise end in a failover), keeps writing to the primary at a fixed
pace, refuses every proxy route between the primary's data center and the others for
``partition_s`` (connections closed, reconnects refused), heals, and reads the primary's
``INFO stats`` deltas (``sync_full``, ``sync_partial_ok``, ``sync_partial_err``). A PING probe on
its own connection gives the primary's latency p99 before the partition (baseline) and from the
heal until every replica is back in sync. With ``2013`` the 16 kb backlog overflows and every
replica full-syncs (the storm); with ``hardened`` they resync partially.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from tally.errors import ProcessError
from tally.ops.ballast import incompressible
from tally.ops.cluster import Cluster
from tally.ops.topology import Topology

SYNC_TIMEOUT_S = 120.0
PROBE_INTERVAL_S = 0.01
SAMPLES_MAX = 1_000_000


@dataclass
class StormResult:
    profile: str
    replicas_remote: int
    partition_s: float
    full_syncs: int
    partial_syncs: int
    partial_sync_errors: int
    seconds_to_in_sync: float
    primary_latency_ms_p99_baseline: float
    primary_latency_ms_p99_during_storm: float
    writes_ok: int
    writes_failed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def p99(samples: list[float]) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class _Load:
    """A paced writer and a PING probe, each on its own connection and thread."""

    def __init__(self, cluster: Cluster, primary: str, rate_per_s: int, value_bytes: int):
        self.client = cluster.nodes[primary].client
        self.rate_per_s, self.value = rate_per_s, incompressible(value_bytes, seed=value_bytes)
        self.stop = threading.Event()
        self.pings: list[tuple[float, float]] = []  # (monotonic, latency ms)
        self.ok = self.failed = 0
        self.threads = [
            threading.Thread(target=self._write, daemon=True),
            threading.Thread(target=self._probe, daemon=True),
        ]

    def __enter__(self) -> _Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def _write(self) -> None:
        with contextlib.closing(self.client(socket_timeout=2.0)) as c:
            i = 0
            while not self.stop.wait(1.0 / self.rate_per_s):
                i += 1
                try:
                    c.set(f"storm:{i % 50_000}", self.value)
                    self.ok += 1
                except (redis.RedisError, OSError):
                    self.failed += 1

    def _probe(self) -> None:
        with contextlib.closing(self.client(socket_timeout=2.0)) as c:
            while not self.stop.wait(PROBE_INTERVAL_S) and len(self.pings) < SAMPLES_MAX:
                start = time.monotonic()
                with contextlib.suppress(redis.RedisError, OSError):
                    c.ping()
                self.pings.append((start, (time.monotonic() - start) * 1000))

    def latencies(self, since: float, until: float) -> list[float]:
        return [ms for at, ms in list(self.pings) if since <= at <= until]


def _stats(client: redis.Redis) -> dict[str, int]:
    info = client.info("stats")
    return {k: int(info[k]) for k in ("sync_full", "sync_partial_ok", "sync_partial_err")}


def _in_sync(client: redis.Redis, replicas: int, offset_min: int) -> bool:
    info = client.info("replication")
    online = [
        v
        for k, v in info.items()
        if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
    ]
    return len(online) >= replicas and all(int(v["offset"]) >= offset_min for v in online)


def _wait_in_sync(client: redis.Redis, replicas: int, offset_min: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _in_sync(client, replicas, offset_min):
            return
        time.sleep(0.02)
    raise ProcessError(f"replicas not back in sync within {timeout_s}s after the heal")


def _preload(client: redis.Redis, dataset_bytes: int, value_bytes: int = 1000) -> None:
    """Give a full sync something to move (incompressible: what a real dataset costs)."""
    value = incompressible(value_bytes)
    count = max(0, dataset_bytes // value_bytes)
    for start in range(0, count, 1000):
        with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(count, start + 1000)):
                pipe.set(f"data:{i}", value)
            pipe.execute()


def run_storm(
    topology: Topology,
    *,
    profile: str,
    partition_s: float = 3.0,
    dataset_bytes: int = 2_000_000,
    write_rate_per_s: int = 500,
    value_bytes: int = 200,
    baseline_s: float = 1.0,
    sync_timeout_s: float = SYNC_TIMEOUT_S,
) -> StormResult:
    """Start the topology with ``profile``, partition every remote replica, heal, measure."""
    with Cluster(topology, profile=profile, sentinels=False) as cluster:
        primary = cluster.topology.primary
        remote_dcs = sorted({r.dc for r in cluster.topology.replicas if r.dc != primary.dc})
        remote = [r for r in cluster.topology.replicas if r.dc != primary.dc]
        with contextlib.closing(cluster.nodes[primary.name].client(socket_timeout=30.0)) as c:
            _preload(c, dataset_bytes)
            cluster.wait_replicas_in_sync()
            # caught up, not just linked: the preload crosses capped links, and a replica still
            # behind when the partition starts measures the preload, not the partition
            preloaded = int(c.info("replication")["master_repl_offset"])
            _wait_in_sync(c, len(cluster.topology.replicas), preloaded, sync_timeout_s)
            before = _stats(c)
            with _Load(cluster, primary.name, write_rate_per_s, value_bytes) as load:
                time.sleep(baseline_s)
                cut_at = time.monotonic()
                for dc in remote_dcs:
                    cluster.partition(primary.dc, dc, mode="refuse")
                time.sleep(partition_s)
                for dc in remote_dcs:
                    cluster.heal(primary.dc, dc)
                healed_at = time.monotonic()
                offset = int(c.info("replication")["master_repl_offset"])
                _wait_in_sync(c, len(cluster.topology.replicas), offset, sync_timeout_s)
                synced_at = time.monotonic()
            after = _stats(c)
        return StormResult(
            profile=cluster.topology.profile,
            replicas_remote=len(remote),
            partition_s=partition_s,
            full_syncs=after["sync_full"] - before["sync_full"],
            partial_syncs=after["sync_partial_ok"] - before["sync_partial_ok"],
            partial_sync_errors=after["sync_partial_err"] - before["sync_partial_err"],
            seconds_to_in_sync=round(synced_at - healed_at, 3),
            primary_latency_ms_p99_baseline=round(
                p99(load.latencies(cut_at - baseline_s, cut_at)), 3
            ),
            primary_latency_ms_p99_during_storm=round(p99(load.latencies(healed_at, synced_at)), 3),
            writes_ok=load.ok,
            writes_failed=load.failed,
        )
