from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tally.ops.cluster import Cluster, read_state
from tally.ops.cluster.procs import pid_alive, stop_pid
from tally.ops.node import RedisNode, orphan_pids
from tally.ops.topology import Topology

CLUSTER_CLI = "from tally.cli.cluster_cmd import cluster; cluster()"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLUSTER_CLI, *args], capture_output=True, text=True, timeout=120
    )


def test_cluster_replicates_across_dcs_through_the_proxies_and_stops_clean(
    topology_factory: Callable[..., Topology],
) -> None:
    topology = topology_factory()
    with Cluster(topology) as cluster:
        primary = cluster.nodes["r1"].client()
        primary.set("k", "v")
        primary.execute_command("WAIT", 2, 5000)
        for name in ("r2", "r3"):
            info = cluster.nodes[name].client().info("replication")
            assert (info["master_host"], info["master_port"]) == cluster.reach(
                cluster.nodes[name].dc, "r1"
            )
            assert cluster.nodes[name].client().get("k") == b"v"
        link = cluster.hub.status()["dc2-to-r1"]  # type: ignore[union-attr]
        assert link["stats"]["bytes_downstream"] > 0
    assert orphan_pids(str(topology.base_dir)) == []


def test_partition_cuts_a_replica_off_and_heal_brings_it_back(
    topology_factory: Callable[..., Topology],
) -> None:
    topology = topology_factory(profile="2013")
    with Cluster(topology) as cluster:
        cluster.partition("dc1", "dc2", mode="refuse")
        cluster.nodes["r1"].client().set("during", "1")
        assert cluster.nodes["r2"].client().info("replication")["master_link_status"] == "down"
        cluster.heal("dc1", "dc2")
        cluster.wait_replicas_in_sync(timeout_s=20)
        assert cluster.nodes["r3"].client().get("during") == b"1"


def test_cluster_up_and_down_from_the_cli_leave_nothing_behind(
    topology_factory: Callable[..., Topology], tmp_path: Path
) -> None:
    topology = topology_factory()
    toml = tmp_path / "t.toml"
    toml.write_text(_as_toml(topology))
    up = _cli("up", "--topology", str(toml), "--json")
    assert up.returncode == 0, up.stderr
    state = read_state(topology.base_dir)
    assert state is not None
    pids = [p.pid for p in state.processes if p.pid] + [state.hub_pid]
    assert len(orphan_pids(str(topology.base_dir))) == 6  # outlived the CLI process
    status = _cli("status", "--topology", str(toml), "--json")
    assert json.loads(status.stdout)["primaries"] == ["r1"]
    down = _cli("down", "--topology", str(toml))
    assert down.returncode == 0, down.stderr
    assert orphan_pids(str(topology.base_dir)) == []
    assert not any(pid_alive(pid) for pid in pids if pid)
    assert read_state(topology.base_dir) is None


def _as_toml(topology: Topology) -> str:
    lines = [
        f'name = "{topology.name}"',
        f'profile = "{topology.profile}"',
        f'base_dir = "{topology.base_dir}"',
        "[params]",
    ]
    lines += [f"{k} = {v}" for k, v in topology.params.items()]
    lines += [f'[[dc]]\nname = "{dc}"' for dc in topology.dcs]
    lines += [
        f'[[node]]\nname = "{n.name}"\ndc = "{n.dc}"\nrole = "{n.role}"' for n in topology.nodes
    ]
    lines += [f'[[sentinel]]\ndc = "{s.dc}"' for s in topology.sentinels]
    lines += [f'[[link]]\nbetween = ["{lk.a}", "{lk.b}"]' for lk in topology.links]
    return "\n".join(lines) + "\n"


def test_stopping_a_process_in_another_dc_sends_shutdown_to_its_own_address(
    tmp_path: Path,
) -> None:
    """`tally cluster down` stops processes it did not start by pid: SHUTDOWN NOSAVE first, to
    the address the node binds (127.0.k.1). Sent to 127.0.0.1 it never arrives, SIGTERM follows,
    and a SIGTERM with save points SAVES: a node that came back empty would overwrite the good
    snapshot on the way down (the 2013 follow-up defect)."""
    node = RedisNode(name="n", dir=tmp_path / "n", host="127.0.2.1", directives={"save": "3600 1"})
    node.start()
    try:
        node.client().set("k", "v")
        pid = node.pid
        assert pid is not None
        stop_pid(pid, host=node.host, port=node.port, password=node.password, save=False)
        assert not pid_alive(pid)
        assert not (node.dir / "dump.rdb").exists()  # NOSAVE: nothing written
    finally:
        node.stop()
    assert orphan_pids(str(tmp_path)) == []
