"""TP001 (AOF would load nothing) and TP007 (no persistence): each danger shown on a real
redis-server first, then the rule catching the config that caused it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tally.ops import binary
from tally.ops.binary import RedisBinary, find_redis_server
from tally.ops.node import RedisNode
from tally.ops.preflight import PreflightParams, check_config_file, check_live

from .conftest import NodeFactory, ids


def _binaries() -> list[RedisBinary]:
    found = [find_redis_server()]
    bundled = binary._bundled()
    if bundled is not None and bundled.resolve() != found[0].path.resolve():
        found.append(find_redis_server(str(bundled)))
    return found


BINARIES = _binaries()


def _params(node: RedisNode) -> PreflightParams:
    assert node.binary is not None
    return PreflightParams(redis_version=node.binary.version[:2])


def _node_with_rdb(tmp_path: Path, redis_binary: RedisBinary) -> RedisNode:
    node = RedisNode(name="primary", dir=tmp_path / "primary", binary=redis_binary)
    node.start()
    client = node.client()
    client.mset({f"balance:{i}": i for i in range(100)})
    client.save()
    node.stop()  # SHUTDOWN NOSAVE: dump.rdb stays the good snapshot
    return node


@pytest.mark.parametrize("redis_binary", BINARIES, ids=lambda b: b.version_text)
def test_aof_enabled_with_only_an_rdb_starts_empty_and_tp001_catches_it(
    tmp_path: Path, redis_binary: RedisBinary
) -> None:
    node = _node_with_rdb(tmp_path, redis_binary)
    node.directives["appendonly"] = "yes"  # the 2013 restart procedure
    node.write_config()
    before = shutil.copytree(node.dir, tmp_path / "before-restart")
    node.start(write_config=False)
    try:
        assert node.client().dbsize() == 0  # the danger: a silently empty dataset
        live = check_live(node.client(), params=_params(node))
    finally:
        node.stop()
    found = check_config_file(node.config_path, data_dir=before, params=_params(node))
    assert "TP001" in ids(found)
    assert "TP001" in ids(live)  # and a running node that started that way is flagged too


@pytest.mark.parametrize("redis_binary", BINARIES, ids=lambda b: b.version_text)
def test_an_existing_aof_loads_and_tp001_stays_quiet_for_both_layouts(
    tmp_path: Path, redis_binary: RedisBinary
) -> None:
    node = RedisNode(
        name="primary",
        dir=tmp_path / "primary",
        binary=redis_binary,
        directives={"appendonly": "yes", "appendfsync": "always"},
    )
    node.start()
    node.client().set("balance:1", 1)
    node.client().save()
    node.stop()
    node.start()
    try:
        assert node.client().get("balance:1") == b"1"
    finally:
        node.stop()
    assert "TP001" not in ids(check_config_file(node.config_path, params=_params(node)))


def test_tp001_with_a_6_2_layout_looks_for_the_single_file(tmp_path: Path) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text(f"dir {tmp_path}\nappendonly yes\nappenddirname aofs\n")
    (tmp_path / "dump.rdb").write_bytes(b"REDIS0009" + b"\0" * 100)
    (tmp_path / "aofs").mkdir()
    (tmp_path / "aofs" / "appendonly.aof.manifest").write_text("file x seq 1 type b\n")
    v62, v70 = PreflightParams(redis_version=(6, 2)), PreflightParams(redis_version=(7, 0))
    assert "TP001" in ids(check_config_file(conf, params=v62))  # 6.2 ignores a 7.x manifest
    assert "TP001" not in ids(check_config_file(conf, params=v70))
    (tmp_path / "appendonly.aof").write_bytes(b"*1\r\n$4\r\nPING\r\n")
    assert "TP001" not in ids(check_config_file(conf, params=v62))


def test_a_primary_without_persistence_comes_back_empty_and_tp007_catches_it(
    make_node: NodeFactory,
) -> None:
    node = make_node("primary", save="", appendonly="no")
    node.client().set("balance:1", 100)
    node.client().shutdown()  # a plain, default SHUTDOWN: nothing configured, nothing saved
    node.stop()
    node.start()
    assert node.client().dbsize() == 0  # the danger
    assert "TP007" in ids(check_config_file(node.config_path, role="primary"))
    assert "TP007" in ids(check_live(node.client(), role="primary"))
    assert "TP007" not in ids(check_config_file(node.config_path, role="replica"))


def test_tp007_is_quiet_with_save_points_or_aof(make_node: NodeFactory) -> None:
    saving = make_node("saving", save="900 1", start=False)
    assert "TP007" not in ids(check_config_file(saving.config_path))
    aof = make_node("aof", appendonly="yes", start=False)
    assert "TP007" not in ids(check_config_file(aof.config_path))
