"""Every process is known by one address (its front) everywhere, and traffic between data
centers passes the proxies, Sentinel's included: so a partition that isolates the primary's
data center makes the Sentinels on the other side fail over (real processes)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import redis

from tally.ops.cluster import Cluster
from tally.ops.cluster.procs import command
from tally.ops.topology import Topology
from tally.store.discovery import MOVED_CHECK_INTERVAL_S, PrimaryLocator
from tests.waiting import wait_for

FAILOVER_TIMEOUT_S = 40.0


def _pairs(raw: list[object]) -> list[dict[str, str]]:
    """SENTINEL REPLICAS/SENTINELS entries (redis-py parses them into dicts, or flat lists)."""

    def text(value: object) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    out = []
    for entry in raw:
        items = (
            entry.items() if isinstance(entry, dict) else zip(entry[::2], entry[1::2], strict=True)
        )  # type: ignore[index]
        out.append({text(k): text(v) for k, v in items})
    return out


def test_every_process_is_named_by_its_front_and_remote_traffic_passes_its_route(
    topology_factory: Callable[..., Topology],
) -> None:
    with Cluster(topology_factory()) as cluster:
        fronts = {name: cluster.front(name) for name in [*cluster.nodes, *cluster.sentinels]}
        assert {h for h, _ in fronts.values()} == {"127.0.1.1", "127.0.2.1", "127.0.3.1"}
        real = {cluster.nodes[n].address for n in cluster.nodes}
        with contextlib.closing(cluster.sentinels["s-dc2"].client()) as s:
            master = command(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "tally")
            assert (master[0].decode(), int(master[1])) == fronts["r1"]
            replicas = {
                (r["ip"], int(r["port"]))
                for r in _pairs(command(s, "SENTINEL", "REPLICAS", "tally"))
            }
            peers = {
                (p["ip"], int(p["port"]))
                for p in _pairs(command(s, "SENTINEL", "SENTINELS", "tally"))
            }
        assert replicas == {fronts["r2"], fronts["r3"]} and not replicas & real
        assert peers == {fronts["s-dc1"], fronts["s-dc3"]}
        with contextlib.closing(cluster.nodes["r1"].client()) as primary:
            sources = {c["addr"].rsplit(":", 1)[0] for c in primary.client_list()}
        assert not sources & {"127.0.2.1", "127.0.3.1"}, "a remote process bypassed the proxy"
        status = cluster.hub.status()  # type: ignore[union-attr]
        assert status["dc2-to-r1"]["stats"]["bytes_downstream"] > 0  # r2 replicates via dc1-dc2
        # Sentinel gossip too: s-dc3 connects to s-dc2 once it has heard of it (hello messages
        # every 2 s), so the route may still be idle right after start; bounded wait
        wait_for(
            lambda: cluster.hub.status()["dc3-to-s-dc2"]["stats"]["bytes_upstream"] > 0,  # type: ignore[union-attr]
            "s-dc3 talking to s-dc2 through its route",
            timeout_s=20,
        )
        assert (
            cluster.routes["dc1-to-r1"].pair == "" and cluster.routes["dc2-to-r1"].pair == "dc1-dc2"
        )


def _role(cluster: Cluster, name: str) -> tuple[str, tuple[str, int] | None]:
    try:
        with contextlib.closing(cluster.nodes[name].client(socket_timeout=1.0)) as c:
            info = c.info("replication")
    except (redis.RedisError, OSError):
        return "down", None
    if info["role"] == "master":
        return "master", None
    return "slave", (str(info["master_host"]), int(info["master_port"]))


def test_isolating_the_primary_dc_fails_over_and_the_old_primary_rejoins_after_the_heal(
    topology_factory: Callable[..., Topology],
) -> None:
    with Cluster(topology_factory()) as cluster:
        locator = PrimaryLocator(cluster.sentinel_target())
        locator.client()
        assert locator.address == cluster.front("r1") and not locator.primary_moved()
        cluster.isolate("dc1", mode="drop")
        wait_for(
            lambda: any(_role(cluster, n)[0] == "master" for n in ("r2", "r3")),
            "failover",
            timeout_s=FAILOVER_TIMEOUT_S,
            pace_s=0.2,
        )
        new = next(n for n in ("r2", "r3") if _role(cluster, n)[0] == "master")
        # dc1's Sentinel cannot hear the others: it still names r1, which still thinks it leads.
        assert _role(cluster, "r1")[0] == "master"
        cluster.heal_all()
        wait_for(
            lambda: _role(cluster, "r1") == ("slave", cluster.front(new)),
            "r1 rejoining",
            timeout_s=FAILOVER_TIMEOUT_S,
            pace_s=0.2,
        )
        other = "r3" if new == "r2" else "r2"
        wait_for(
            lambda: _role(cluster, other) == ("slave", cluster.front(new)),
            f"{other} moving",
            timeout_s=FAILOVER_TIMEOUT_S,
            pace_s=0.2,
        )
        for sentinel in cluster.sentinels.values():
            with contextlib.closing(sentinel.client()) as s:
                addr = command(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "tally")
            assert (addr[0].decode(), int(addr[1])) == cluster.front(new), sentinel.name
        time.sleep(MOVED_CHECK_INTERVAL_S)
        assert locator.primary_moved()  # the engine's cue to follow after NOREPLICAS
        assert not locator.primary_moved()  # rate-limited: at most one round per interval
        locator.close()
