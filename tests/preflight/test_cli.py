"""``tally preflight``: exit 1 on error findings, 0 otherwise, 2 on usage errors."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tally.cli.preflight_cmd import preflight

from .conftest import NodeFactory

HARDENED = {
    "appendonly": "yes",
    "save": "900 1",
    "repl_backlog_size": "128mb",
    "client_output_buffer_limit": "replica 512mb 256mb 120",
    "repl_diskless_sync": "yes",
    "repl_diskless_sync_delay": 5,
    "min_replicas_to_write": 1,
    "maxmemory_policy": "noeviction",
}


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(preflight, list(args))
    return result.exit_code, result.output


def test_a_hardened_config_passes_with_exit_0(make_node: NodeFactory) -> None:
    node = make_node("primary", start=False, **HARDENED)
    code, output = _run("--config", str(node.config_path), "--bandwidth", "10mb")
    assert code == 0, output
    assert "0 error(s)" in output


def test_a_2013_style_config_fails_with_exit_1_and_json_findings(make_node: NodeFactory) -> None:
    node = make_node("primary", start=False, repl_backlog_size="16kb", repl_diskless_sync="no")
    node.directives["replicaof"] = f"127.0.0.1 {node.port}"
    node.write_config()
    code, output = _run("--config", str(node.config_path), "--json", "--write-rate", "100kb")
    assert code == 1
    found = {f["rule_id"]: f for f in json.loads(output)}
    assert {"TP002", "TP003", "TP004", "TP007", "TP008"} <= set(found)
    assert set(found["TP004"]) == {"rule_id", "severity", "title", "detail", "fix"}


def test_a_live_node_is_checked_over_its_url(make_node: NodeFactory) -> None:
    good = make_node("good", **HARDENED)
    assert _run("--live", f"redis://127.0.0.1:{good.port}")[0] == 0
    bad = make_node("bad", start=False)
    bad.directives["replicaof"] = f"127.0.0.1 {bad.port}"
    bad.start()
    code, output = _run("--live", f"redis://127.0.0.1:{bad.port}")
    assert code == 1 and "TP003" in output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert _run()[0] == 2
    conf = tmp_path / "redis.conf"
    conf.write_text("include /etc/redis/common.conf\n")
    code, output = _run("--config", str(conf))
    assert code == 2 and "include" in output
    assert _run("--config", str(conf), "--live", "redis://127.0.0.1:1")[0] == 2
    assert _run("--config", str(conf), "--write-rate", "lots")[0] == 2


def test_an_unreachable_live_node_exits_2() -> None:
    code, output = _run("--live", "redis://127.0.0.1:1")
    assert code == 2 and "cannot read" in output
