"""TP006 (evicting policy) shown on a real redis-server; TP010 (open bind) on configs only."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tally.ops.preflight import check_config_file, check_live

from .conftest import NodeFactory, ids, severity_of

VALUE = b"v" * 10_000


def test_an_evicting_policy_drops_a_balance_key_and_tp006_catches_it(
    make_node: NodeFactory,
) -> None:
    node = make_node("primary", maxmemory="8mb", maxmemory_policy="allkeys-lru")
    client = node.client()
    client.set("balance:first", 100)
    for i in range(2000):  # 20 MB into 8 MB
        client.set(f"usage:{i}", VALUE)
    assert int(client.info("stats")["evicted_keys"]) > 0  # the danger: keys silently dropped
    assert client.dbsize() < 2001
    assert severity_of(check_config_file(node.config_path), "TP006") == "error"
    assert "TP006" in ids(check_live(client))


def test_noeviction_refuses_the_write_instead_and_tp006_is_quiet(make_node: NodeFactory) -> None:
    node = make_node("primary", maxmemory="8mb", maxmemory_policy="noeviction")
    client = node.client()
    client.set("balance:first", 100)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        for i in range(2000):
            client.set(f"usage:{i}", VALUE)
    assert client.get("balance:first") == b"100"
    assert "TP006" not in ids(check_config_file(node.config_path))


def test_an_evicting_policy_without_maxmemory_is_a_warning(make_node: NodeFactory) -> None:
    node = make_node("primary", maxmemory_policy="volatile-lru", start=False)
    assert severity_of(check_config_file(node.config_path), "TP006") == "warning"


# The danger of TP010 (anyone on the network can read and write balances) is not shown for real:
# tests never bind anything but loopback. The rule is tested on config files only.
@pytest.mark.parametrize(
    ("lines", "fires"),
    [
        ("bind 0.0.0.0\n", True),
        ("bind 127.0.0.1 10.1.2.3\n", True),
        ("", True),  # no bind: every interface
        ("bind 0.0.0.0\nrequirepass s3cret\n", False),
        ("bind 0.0.0.0\nuser default on >s3cret ~* +@all\n", False),
        ("bind 0.0.0.0\nuser default on nopass ~* +@all\n", True),
        ("bind 127.0.0.1 -::1\n", False),
    ],
)
def test_tp010_fires_on_a_non_loopback_bind_without_a_password(
    tmp_path: Path, lines: str, fires: bool
) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text(f"port 7000\ndir {tmp_path}\n{lines}")
    assert ("TP010" in ids(check_config_file(conf))) is fires


def test_tp010_is_quiet_on_a_live_loopback_node(make_node: NodeFactory) -> None:
    assert "TP010" not in ids(check_live(make_node("primary").client()))
