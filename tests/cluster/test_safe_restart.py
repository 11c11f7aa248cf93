"""The two 2013 restart defects: first shown happening on a real node, then refused by --safe."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tally.ops.binary import find_redis_server
from tally.ops.cluster.procs import command
from tally.ops.node import RedisNode, orphan_pids
from tally.ops.preflight import PreflightParams
from tally.ops.profiles import NodeRole, ProfileParams, node_directives
from tally.ops.restart import quarantine_directives, safe_restart
from tally.store.keys import KeyLayout

LAYOUT = KeyLayout()


def _primary(tmp_path: Path, profile: str) -> Iterator[RedisNode]:
    password = "pw" if profile == "hardened" else None
    directives = node_directives(profile, find_redis_server(), NodeRole(None), password=password)
    directives["min-replicas-to-write"] = 0  # a lone node: no replica to wait for
    node = RedisNode(name="r1", dir=tmp_path / "r1", directives=directives, password=password)
    node.start()
    client = node.client()
    for shard in range(LAYOUT.shards):
        client.set(LAYOUT.epoch(shard), LAYOUT.epoch_value("e1"))
        client.hset(LAYOUT.account(shard, f"acct{shard}"), mapping={"bal": 100, "cur": "USD"})
    try:
        yield node
    finally:
        node.stop()
        assert orphan_pids(str(tmp_path)) == []


@pytest.fixture
def primary_2013(tmp_path: Path) -> Iterator[RedisNode]:
    """A 2013-profile primary holding tally data: epoch keys and some accounts."""
    yield from _primary(tmp_path, "2013")


@pytest.fixture
def primary_hardened(tmp_path: Path) -> Iterator[RedisNode]:
    yield from _primary(tmp_path, "hardened")


@pytest.fixture
def replica_hardened(tmp_path: Path, primary_hardened: RedisNode) -> Iterator[RedisNode]:
    """A replica of ``primary_hardened``, in sync, with a replica-priority of its own (7)."""
    role = NodeRole(("127.0.0.1", primary_hardened.port))
    directives = node_directives("hardened", find_redis_server(), role, password="pw")
    directives["replica-priority"] = 7
    node = RedisNode(name="r2", dir=tmp_path / "r2", directives=directives, password="pw")
    node.start()
    try:
        wait_synced(node)
        yield node
    finally:
        node.stop()


def wait_synced(node: RedisNode, timeout_s: float = 10.0) -> None:
    """Link up, and the AOF the sync starts written (a SHUTDOWN during that initial AOF rewrite
    is refused, and the stop falls back to signals after its timeout)."""
    deadline = time.monotonic() + timeout_s
    while not _synced(node.client().info()):
        assert time.monotonic() < deadline, f"{node.name} not in sync"
        time.sleep(0.05)


def _synced(info: dict[str, object]) -> bool:
    rewriting = info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")
    return info.get("master_link_status") == "up" and not rewriting


def _priority(node: RedisNode) -> str:
    return str(node.client().config_get("replica-priority")["replica-priority"])


def _losing_the_data(node: RedisNode) -> Callable[[], None]:
    """A stop after which the node's restart loads nothing: the 2013 outcome, behind preflight's
    back (preflight saw the good files)."""

    def stop() -> None:
        node.stop(save=False)
        (node.dir / "dump.rdb").unlink(missing_ok=True)
        shutil.rmtree(node.dir / "appendonlydir", ignore_errors=True)
        (node.dir / "appendonly.aof").unlink(missing_ok=True)

    return stop


def _params() -> PreflightParams:
    return PreflightParams(ProfileParams(), slowest_link_bytes_per_s=0, replicas_expected=0)


def test_enabling_aof_with_a_good_dump_rdb_still_comes_back_empty(
    primary_2013: RedisNode,
) -> None:
    primary_2013.client().execute_command("SAVE")
    assert (primary_2013.dir / "dump.rdb").stat().st_size > 0
    primary_2013.restart(directives={"appendonly": "yes"})
    assert primary_2013.client().dbsize() == 0


def test_safe_restart_refuses_enabling_aof_that_would_load_nothing(
    primary_2013: RedisNode,
) -> None:
    report = safe_restart(primary_2013, expected_role="primary", mutations={"appendonly": "yes"})
    assert not report.ok and report.stage == "refused"
    assert "TP001" in report.message
    assert primary_2013.client().dbsize() == 2 * LAYOUT.shards  # never stopped
    assert primary_2013.client().set("still", "writable")


def test_primary_restarted_with_replicaof_itself_comes_back_read_only(
    primary_2013: RedisNode,
) -> None:
    primary_2013.restart(directives={"replicaof": f"127.0.0.1 {primary_2013.port}"})
    with pytest.raises(redis.ReadOnlyError):
        primary_2013.client().set("x", "1")


def test_safe_restart_refuses_replicaof_on_the_primary(primary_2013: RedisNode) -> None:
    report = safe_restart(
        primary_2013,
        expected_role="primary",
        mutations={"replicaof": f"127.0.0.1 {primary_2013.port}"},
    )
    assert not report.ok and report.stage == "refused"
    assert "TP002" in report.message and "TP003" in report.message
    assert primary_2013.client().set("still", "writable")


def test_safe_restart_with_a_sound_change_admits_the_node_with_its_data(
    primary_hardened: RedisNode,
) -> None:
    primary_2013 = primary_hardened
    report = safe_restart(
        primary_2013, expected_role="primary", mutations={"maxclients": 5000}, params=_params()
    )
    assert report.ok and report.stage == "admitted", report.message
    assert report.after is not None and report.after.epochs == report.before.epochs  # type: ignore[union-attr]
    assert primary_2013.client().set("after", "1")


def test_a_node_that_comes_back_empty_despite_preflight_stays_quarantined(
    primary_hardened: RedisNode,
) -> None:
    primary_2013 = primary_hardened
    report = safe_restart(
        primary_2013,
        expected_role="primary",
        stop=_losing_the_data(primary_2013),
        params=_params(),
    )
    assert not report.ok and report.stage == "quarantined"
    assert "EMPTY" in report.message
    client = primary_2013.client()
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("x", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command("PSYNC", "?", "-1")
    assert _priority(primary_2013) == "0"  # Sentinel would never promote it


def test_a_replica_that_comes_back_empty_and_resyncs_is_admitted_with_its_priority(
    primary_hardened: RedisNode, replica_hardened: RedisNode
) -> None:
    report = safe_restart(
        replica_hardened,
        expected_role="replica",
        stop=_losing_the_data(replica_hardened),
        params=_params(),
    )
    assert report.ok and report.stage == "admitted", report.message
    assert replica_hardened.client().dbsize() == primary_hardened.client().dbsize() > 0
    assert _priority(replica_hardened) == "7"  # the configured one, not the quarantine's 0
    assert "replica-priority 7" in replica_hardened.config_path.read_text()


def test_a_replica_that_comes_back_empty_and_cannot_resync_stays_quarantined(
    primary_hardened: RedisNode, replica_hardened: RedisNode
) -> None:
    # its primary serves no sync (as the 2013 primary, timing out every full sync)
    command(primary_hardened.client(), "ACL", "SETUSER", "default", "-sync", "-psync")
    report = safe_restart(
        replica_hardened,
        expected_role="replica",
        stop=_losing_the_data(replica_hardened),
        params=_params(),
        replica_sync_timeout_s=1.0,
    )
    assert not report.ok and report.stage == "quarantined", report.message
    assert "EMPTY" in report.message and "not resynced" in report.message
    assert replica_hardened.client().dbsize() == 0
    assert _priority(replica_hardened) == "0"


def test_a_replica_whose_link_is_down_but_kept_its_data_is_admitted(
    primary_hardened: RedisNode, replica_hardened: RedisNode
) -> None:
    command(primary_hardened.client(), "ACL", "SETUSER", "default", "-sync", "-psync")
    report = safe_restart(
        replica_hardened, expected_role="replica", params=_params(), replica_sync_timeout_s=0.5
    )
    assert report.ok and report.stage == "admitted", report.message
    assert report.after is not None and report.after.link != "connected"
    assert _priority(replica_hardened) == "7"


def test_quarantine_directives_keep_the_password_and_set_replica_priority_0() -> None:
    out = quarantine_directives({"requirepass": "pw", "port": 1, "replica-priority": 7}, "pw")
    users = list(out["user"])
    assert "requirepass" not in out and users[0].startswith("default on >pw ") and len(users) == 1
    assert out["replica-priority"] == 0
    # a cluster node's replication user (the sync quarantine) stays beside the default user
    sync_user = "tally-sync off #00 resetchannels -@all +psync"
    out = quarantine_directives({"requirepass": "pw", "user": [sync_user]}, "pw")
    assert list(out["user"])[1:] == [sync_user]
