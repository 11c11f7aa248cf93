"""The two 2013 restart defects: first shown happening on a real node, then refused by --safe."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tally.ops.binary import find_redis_server
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

    # Preflight cannot see this one: the data dir is wiped behind its back after the check.
    def stop_and_lose_the_data() -> None:
        primary_2013.stop(save=False)
        (primary_2013.dir / "dump.rdb").unlink(missing_ok=True)
        shutil.rmtree(primary_2013.dir / "appendonlydir", ignore_errors=True)
        (primary_2013.dir / "appendonly.aof").unlink(missing_ok=True)

    report = safe_restart(
        primary_2013, expected_role="primary", stop=stop_and_lose_the_data, params=_params()
    )
    assert not report.ok and report.stage == "quarantined"
    assert "EMPTY" in report.message
    client = primary_2013.client()
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("x", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command("PSYNC", "?", "-1")


def test_quarantine_directives_keep_the_password() -> None:
    out = quarantine_directives({"requirepass": "pw", "port": 1}, "pw")
    assert "requirepass" not in out and str(out["user"]).startswith("default on >pw ")
