"""Every config tally generates states each setting preflight reads, so no server version's
default decides a finding; and each one, started for real on the embedded 6.2 binary and on the
system 7.x binary, passes live preflight for the deployment it belongs to.

The control: the embedded node's directives before this test existed named no
``repl-diskless-sync``; Redis 7 defaults it to yes and 6.2 to no, so the same file gave TP008 on
6.2 only (`tally serve` refused to start on a machine with only Python)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tally.cli.local_cmd import start_local
from tally.ops.binary import RedisBinary
from tally.ops.node import ConfigValue, RedisNode, orphan_pids, render_config
from tally.ops.preflight import PreflightParams, Severity, check_config_file, check_live
from tally.ops.preflight.conf import parse_conf
from tally.ops.preflight.settings import PREFLIGHT_READS, PREFLIGHT_READS_7
from tally.ops.profiles import NodeRole, node_directives, single_node_directives
from tally.service.embedded import embedded_node
from tests.binaries import BINARIES, binary_id

PASSWORD = "generated-config-test-secret"
#: What the 2013 profile is built to get wrong, on every binary alike.
ERRORS_2013 = {"primary": {"TP004", "TP008"}, "replica": {"TP004"}}
HARDENED = PreflightParams(replicas_expected=2, slowest_link_bytes_per_s=0)


def _generated(binary: RedisBinary, tmp: Path) -> dict[str, tuple[str, dict[str, ConfigValue]]]:
    """name -> (role, directives) for every config tally generates."""
    role_replica = NodeRole(("127.0.0.1", 1))
    (tmp / "home").mkdir(exist_ok=True)
    embedded = embedded_node(tmp / "home", binary=binary).directives
    return {
        "embedded": ("primary", embedded),
        "local": ("primary", single_node_directives(binary)),
        "2013-primary": ("primary", node_directives("2013", binary, NodeRole(None, 2))),
        "2013-replica": ("replica", node_directives("2013", binary, role_replica)),
        "hardened-primary": (
            "primary",
            node_directives("hardened", binary, NodeRole(None, 2), password=PASSWORD),
        ),
        "hardened-replica": (
            "replica",
            node_directives("hardened", binary, role_replica, password=PASSWORD),
        ),
    }


def _rendered(directives: dict[str, ConfigValue], tmp: Path) -> str:
    node = RedisNode(name="n", dir=tmp / "n", port=1, directives=directives)
    return render_config({**node.base_directives(), **directives})


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_every_generated_config_states_each_setting_preflight_reads(
    binary: RedisBinary, tmp_path: Path
) -> None:
    reads = PREFLIGHT_READS + (PREFLIGHT_READS_7 if binary.at_least(7, 0) else ())
    for name, (_role, directives) in _generated(binary, tmp_path).items():
        conf = parse_conf(_rendered(directives, tmp_path))
        missing = [d for d in reads if conf.last(d) is None]
        assert missing == [], f"{name} leaves {missing} to the server's defaults"


def _findings_by_version(text: str, role: str, tmp: Path) -> dict[tuple[int, int], list[str]]:
    path = tmp / "redis.conf"
    path.write_text(text)
    (tmp / "data").mkdir(exist_ok=True)
    out = {}
    for version in ((6, 2), (7, 0)):
        params = PreflightParams(replicas_expected=2, redis_version=version)
        found = check_config_file(path, role=role, params=params, data_dir=tmp / "data")
        out[version] = [f"{f.rule_id}:{f.severity.value}" for f in found]
    return out


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_generated_configs_get_the_same_findings_whatever_the_server_version(
    binary: RedisBinary, tmp_path: Path
) -> None:
    for name, (role, directives) in _generated(binary, tmp_path).items():
        by_version = _findings_by_version(_rendered(directives, tmp_path), role, tmp_path)
        assert by_version[(6, 2)] == by_version[(7, 0)], name


def test_control_a_config_that_leaves_diskless_sync_to_the_default_differs_by_version(
    tmp_path: Path,
) -> None:
    """What the test above guards against: the embedded node's old directives."""
    old_embedded = {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory-policy": "noeviction",
    }
    by_version = _findings_by_version(_rendered(old_embedded, tmp_path), "primary", tmp_path)
    assert "TP008:error" in by_version[(6, 2)]
    assert "TP008:error" not in by_version[(7, 0)]


@contextlib.contextmanager
def _started(nodes: list[RedisNode], base: Path) -> Iterator[list[RedisNode]]:
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in reversed(nodes):
            node.stop()
        assert orphan_pids(str(base)) == [], "redis-server left running"


def _errors(node: RedisNode, role: str, params: PreflightParams) -> set[str]:
    with contextlib.closing(node.client()) as client:
        findings = check_live(client, role=role, params=params)
    return {f.rule_id for f in findings if f.severity is Severity.ERROR}


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_the_single_node_configs_start_and_pass_live_preflight(
    binary: RedisBinary, tmp_path: Path
) -> None:
    for home in ("serve", "local"):
        (tmp_path / home).mkdir()
    embedded = embedded_node(tmp_path / "serve", binary=binary)
    with _started([embedded], tmp_path):
        assert _errors(embedded, "primary", PreflightParams.single_node()) == set()
    local = start_local(tmp_path / "local", binary=binary, die_with_parent=True)
    try:
        assert _errors(local, "primary", PreflightParams.single_node()) == set()
    finally:
        local.stop()
    assert orphan_pids(str(tmp_path)) == [], "redis-server left running"


def _three_nodes(binary: RedisBinary, base: Path, profile: str) -> list[RedisNode]:
    password = PASSWORD if profile == "hardened" else None
    primary = RedisNode(name="p", dir=base / "p", binary=binary, password=password)
    primary.directives = node_directives(profile, binary, NodeRole(None, 2), password=password)
    nodes = [primary]
    for name in ("r1", "r2"):
        role = NodeRole((primary.host, primary.port))
        directives = node_directives(profile, binary, role, password=password)
        nodes.append(
            RedisNode(
                name=name, dir=base / name, binary=binary, password=password, directives=directives
            )
        )
    return nodes


@pytest.mark.parametrize("profile", ["hardened", "2013"])
@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_the_profiles_start_and_live_preflight_finds_only_what_they_are_built_to_have(
    binary: RedisBinary, profile: str, tmp_path: Path
) -> None:
    nodes = _three_nodes(binary, tmp_path, profile)
    with _started(nodes, tmp_path):
        primary, *replicas = nodes
        expected = ERRORS_2013 if profile == "2013" else {"primary": set(), "replica": set()}
        assert _errors(primary, "primary", HARDENED) == expected["primary"]
        for replica in replicas:
            assert _errors(replica, "replica", HARDENED) == expected["replica"]
