from __future__ import annotations

from pathlib import Path

import pytest

from tally.errors import ProcessError
from tally.ops.node import RedisNode, free_port, orphan_pids
from tests.waiting import wait_for

KEYS = 200  # with 50 ms each, a replica's first AOF takes ~10 s


def test_node_starts_answers_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with RedisNode(name="n", dir=tmp_path) as node:
        client = node.client()
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert orphan_pids(str(tmp_path)) == [node.pid]
    assert orphan_pids(str(tmp_path)) == []


def test_node_with_a_bad_directive_fails_fast_with_its_log(tmp_path: Path) -> None:
    node = RedisNode(name="bad", dir=tmp_path, directives={"no-such-directive": "1"})
    with pytest.raises(ProcessError, match="exited"):
        node.start(timeout_s=5)
    assert orphan_pids(str(tmp_path)) == []


def test_paused_node_is_resumed_by_stop(tmp_path: Path) -> None:
    node = RedisNode(name="p", dir=tmp_path)
    node.start()
    node.pause()
    node.stop(timeout_s=1)
    assert orphan_pids(str(tmp_path)) == []


def test_a_node_in_a_relative_dir_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with RedisNode(name="rel", dir=Path(".tally/redis")) as node:
        assert node.client().ping()
        assert (tmp_path / ".tally" / "redis" / "redis.log").exists()


def test_chosen_ports_stay_below_the_ephemeral_range_that_outgoing_connections_use() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    assert all(20000 <= p < low for p in ports)


def test_free_port_never_hands_out_the_same_port_twice_before_it_is_bound() -> None:
    """A cluster picks every node's port first and starts the nodes after."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_stop_with_save_waits_out_a_replicas_first_aof_write_instead_of_killing_it(
    tmp_path: Path,
) -> None:
    """A replica with AOF on writes its first AOF right after its sync, and Redis refuses
    SHUTDOWN until that is done ("Writing initial AOF, can't exit"). A stop that escalates to
    signals then kills it: nothing saved. The stop retries SHUTDOWN instead and it exits 0."""
    with RedisNode(name="p", dir=tmp_path / "p") as primary:
        client = primary.client()
        client.mset({f"k{i}": i for i in range(KEYS)})
        replica = RedisNode(
            name="r",
            dir=tmp_path / "r",
            directives={
                "replicaof": f"127.0.0.1 {primary.port}",
                "appendonly": "yes",
                "rdb-key-save-delay": 50_000,  # µs per key: the first AOF takes ~KEYS/20 s
            },
        )
        replica.start()
        try:
            rclient = replica.client()
            wait_for(lambda: rclient.info("replication")["master_link_status"] == "up", "sync")
            assert rclient.info("persistence")["aof_rewrite_in_progress"] == 1
            proc = replica.process
            assert proc is not None
            replica.stop(save=True, timeout_s=1.0)
            assert proc.returncode == 0  # shut down by SHUTDOWN, not SIGKILL
        finally:
            replica.stop()
    replica.directives = {"appendonly": "yes"}  # alone now: it loads its own AOF
    with replica:
        assert replica.client().dbsize() == KEYS
    assert orphan_pids(str(tmp_path)) == []
