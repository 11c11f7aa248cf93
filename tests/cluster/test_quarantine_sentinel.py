"""A node that ``safe_restart`` keeps quarantined is never handed back by Sentinel.

The danger (F3 through Sentinel): a replica restarted with a config that loads nothing comes back
EMPTY and cannot resync (here its primary refuses SYNC/PSYNC, as the 2013 primary, overloaded by
full syncs, timed them all out). The quarantine keeps writes and syncs off it, but it still
answers PING and is a replica with a priority, so when the primary dies Sentinel can promote it:
the empty dataset becomes the primary. Shown first with the quarantine as it was (ACL only),
then with ``replica-priority 0``: a failover picks another replica or, with none, gives up.

The same for a replica restarted without ``replicaof``: it comes back as a primary, whose INFO
carries no priority, so Sentinel promotes it with the one it cached; ``safe_restart`` refuses that
restart (TP011).

Where the other replica is killed with the primary, the restarted node is the only one Sentinel
could pick: the control is deterministic, and the fix cannot pass by Sentinel picking another.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import redis

from tally.ops import restart
from tally.ops.cluster import Cluster, ClusterNode
from tally.ops.cluster.procs import command
from tally.ops.node import ConfigValue
from tally.ops.preflight import PreflightParams
from tally.ops.restart import RestartReport, safe_restart
from tally.ops.topology import Topology
from tally.store.keys import KeyLayout

LAYOUT = KeyLayout()
EVENT_WAIT_S = 30.0  # failover attempts: down-after 1 s, retried after 2 x failover-timeout 3 s
SYNC_WAIT_S = 2.0
SENTINEL_INFO_WAIT_S = 30.0  # Sentinel reads a replica's INFO every 10 s


class SentinelEvents:
    """Every event each Sentinel publishes (``PSUBSCRIBE *``), read on demand."""

    def __init__(self, sentinels: Iterator[ClusterNode]) -> None:
        self.clients = [s.client(socket_timeout=1.0) for s in sentinels]
        self.pubsubs = [_pubsub(c) for c in self.clients]
        for pubsub in self.pubsubs:
            pubsub.psubscribe("*")
        self.seen: list[tuple[str, str]] = []

    def poll(self) -> None:
        for pubsub in self.pubsubs:
            while (message := pubsub.get_message(timeout=0.01)) is not None:
                if message["type"] == "pmessage":
                    self.seen.append((_text(message["channel"]), _text(message["data"])))

    def wait_for(self, channel: str, timeout_s: float, *, count: int = 1) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            if self.channels().count(channel) >= count:
                return
            time.sleep(0.1)
        raise AssertionError(f"not {count} x {channel} within {timeout_s}s; saw {self.channels()}")

    def channels(self) -> list[str]:
        return [name for name, _ in self.seen]

    def close(self) -> None:
        for closing in (*self.pubsubs, *self.clients):
            with contextlib.suppress(redis.RedisError, OSError):
                closing.close()


def _pubsub(client: Any) -> Any:
    """redis-py's ``pubsub`` is untyped: the escape hatch, as ``command`` for commands."""
    return client.pubsub(ignore_subscribe_messages=True)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _seed(primary: ClusterNode) -> None:
    client = primary.client()
    for shard in range(LAYOUT.shards):
        client.set(LAYOUT.epoch(shard), LAYOUT.epoch_value("e1"))
        client.hset(LAYOUT.account(shard, f"acct{shard}"), mapping={"bal": 100, "cur": "USD"})
    assert command(client, "WAIT", 2, 5000) == 2


def _restart_empty_and_unsynced(cluster: Cluster) -> RestartReport:
    """r2 restarted with its data gone, while r1 serves it no resync."""
    command(cluster.nodes["r1"].client(), "ACL", "SETUSER", "default", "-sync", "-psync")
    return _restart_empty(cluster)


def _restart_empty(cluster: Cluster, removals: tuple[str, ...] = ()) -> RestartReport:
    r2 = cluster.nodes["r2"]

    def stop_and_lose_the_data() -> None:  # what `appendonly yes` without an AOF loads: nothing
        r2.stop(save=False)
        for name in ("dump.rdb", "appendonly.aof"):
            (r2.node.dir / name).unlink(missing_ok=True)
        shutil.rmtree(r2.node.dir / "appendonlydir", ignore_errors=True)

    return safe_restart(
        r2.node,
        expected_role="replica",
        removals=removals,
        params=PreflightParams.for_topology(cluster.topology, sizing=cluster.params),
        stop=stop_and_lose_the_data,
        replica_sync_timeout_s=SYNC_WAIT_S,
    )


def _role(handle: ClusterNode) -> str:
    with contextlib.closing(handle.client(socket_timeout=2.0)) as c:
        return _text(command(c, "ROLE")[0])


def _replica_views(sentinel: ClusterNode, master_name: str) -> list[dict[str, str]]:
    with contextlib.closing(sentinel.client(socket_timeout=2.0)) as c:
        raw = command(c, "SENTINEL", "REPLICAS", master_name)
    views = []
    for entry in raw:
        pairs = (
            entry.items() if isinstance(entry, dict) else zip(entry[::2], entry[1::2], strict=True)
        )
        views.append({_text(k): _text(v) for k, v in pairs})
    return views


def _wait_sentinels_know_the_restart(cluster: Cluster, handle: ClusterNode) -> None:
    """Every Sentinel has read the restarted node's INFO (its new run id), so the failover below
    judges the node as it runs now, not as Sentinel remembered it (see ``ops.restart``'s doc
    for that window)."""
    run_id = _text(handle.client().info("server")["run_id"])
    deadline = time.monotonic() + SENTINEL_INFO_WAIT_S
    for sentinel in cluster.sentinels.values():
        while not any(
            v.get("runid") == run_id for v in _replica_views(sentinel, cluster.topology.master_name)
        ):
            assert time.monotonic() < deadline, f"{sentinel.name} never read {handle.name}'s INFO"
            time.sleep(0.2)


def _fail_primary_and_watch(cluster: Cluster, *, other_replica_too: bool = True) -> SentinelEvents:
    _wait_sentinels_know_the_restart(cluster, cluster.nodes["r2"])
    events = SentinelEvents(iter(cluster.sentinels.values()))
    if other_replica_too:
        cluster.nodes["r3"].kill()  # the only candidate left is the restarted r2
    cluster.nodes["r1"].kill()
    return events


def _quarantined(handle: ClusterNode) -> bool:
    with contextlib.closing(handle.client(socket_timeout=2.0)) as c:
        priority = c.config_get("replica-priority")["replica-priority"]
        try:
            command(c, "PSYNC", "?", "-1")
        except redis.exceptions.NoPermissionError:
            return str(priority) == "0"
    return False


def _quarantine_r2_then_fail_the_primary(
    cluster: Cluster, request: pytest.FixtureRequest, *, other_replica_too: bool = True
) -> SentinelEvents:
    _seed(cluster.nodes["r1"])
    report = _restart_empty_and_unsynced(cluster)
    assert report.stage == "quarantined" and "EMPTY" in report.message, report.message
    events = _fail_primary_and_watch(cluster, other_replica_too=other_replica_too)
    request.addfinalizer(events.close)
    return events


def _without_priority(
    directives: Mapping[str, ConfigValue], password: str | None
) -> dict[str, ConfigValue]:
    """The quarantine as it was before replica-priority 0: ACL only."""
    out = _QUARANTINE(directives, password)
    out.pop("replica-priority")
    return out


_QUARANTINE = restart.quarantine_directives


def test_sentinel_promotes_an_empty_quarantined_replica_without_priority_0(
    topology_factory: Callable[..., Topology],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setattr(restart, "quarantine_directives", _without_priority)
    with Cluster(topology_factory()) as cluster:
        events = _quarantine_r2_then_fail_the_primary(cluster, request)
        events.wait_for("+switch-master", EVENT_WAIT_S)
        r2 = cluster.nodes["r2"]
        # the danger: the primary of record is now the EMPTY node
        assert _role(r2) == "master"
        assert r2.client().dbsize() == 0


def test_sentinel_never_promotes_a_quarantined_replica(
    topology_factory: Callable[..., Topology], request: pytest.FixtureRequest
) -> None:
    with Cluster(topology_factory()) as cluster:
        events = _quarantine_r2_then_fail_the_primary(cluster, request)
        events.wait_for("-failover-abort-no-good-slave", EVENT_WAIT_S, count=2)
        assert "+selected-slave" not in events.channels()
        assert "+switch-master" not in events.channels()
        assert _role(cluster.nodes["r2"]) == "slave"
        assert _quarantined(cluster.nodes["r2"])


def test_sentinel_picks_another_replica_and_repoints_the_quarantined_one(
    topology_factory: Callable[..., Topology], request: pytest.FixtureRequest
) -> None:
    with Cluster(topology_factory()) as cluster:
        events = _quarantine_r2_then_fail_the_primary(cluster, request, other_replica_too=False)
        events.wait_for("+switch-master", EVENT_WAIT_S)
        r2, r3 = cluster.nodes["r2"], cluster.nodes["r3"]
        assert _role(r3) == "master" and r3.client().dbsize() > 0
        # Sentinel's REPLICAOF passes the quarantine: r2 copies the new primary's dataset over
        # its empty one, and stays quarantined (see ops.restart's doc).
        deadline = time.monotonic() + EVENT_WAIT_S
        while r2.client().dbsize() != r3.client().dbsize():
            assert time.monotonic() < deadline, "r2 never copied the new primary"
            time.sleep(0.2)
        assert _role(r2) == "slave" and _quarantined(r2)


def test_sentinel_promotes_a_replica_restarted_without_replicaof_unless_refused(
    topology_factory: Callable[..., Topology],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    with Cluster(topology_factory()) as cluster:
        _seed(cluster.nodes["r1"])
        keys = cluster.nodes["r2"].client().dbsize()
        report = _restart_empty(cluster, removals=("replicaof",))
        assert report.stage == "refused" and "TP011" in report.message, report.message
        assert _role(cluster.nodes["r2"]) == "slave"
        assert cluster.nodes["r2"].client().dbsize() == keys  # never stopped

        # Control: the same restart without the refusal. The node comes back as an EMPTY
        # primary; quarantined, but its INFO carries no priority, and Sentinel promotes it.
        monkeypatch.setattr(restart, "REFUSED_WARNINGS", frozenset())
        report = _restart_empty(cluster, removals=("replicaof",))
        assert report.stage == "quarantined" and "came back as master" in report.message
        events = _fail_primary_and_watch(cluster)
        request.addfinalizer(events.close)
        events.wait_for("+switch-master", EVENT_WAIT_S)
        assert _role(cluster.nodes["r2"]) == "master"
        assert cluster.nodes["r2"].client().dbsize() == 0
