"""``tally proxy serve`` as a separate process, steered over its control port."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from tally.cli.proxy_cmd import proxy
from tally.errors import InfrastructureError, UsageError
from tally.ops.faultproxy import LinkSpec, ProxyControl, UnknownLink
from tally.ops.node import RedisNode, _die_with_parent, free_port
from tests.waiting import wait_for

from .conftest import LINK


@pytest.fixture
def daemon(tmp_path: Path, redis_node: RedisNode) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    config = tmp_path / "links.toml"
    config.write_text(f'[[link]]\nname = "{LINK}"\nupstream = "127.0.0.1:{redis_node.port}"\n')
    ready = tmp_path / "ready.json"
    argv = [sys.executable, "-m", "tally.cli.proxy_cmd", "serve", "--config", str(config)]
    argv += ["--control-port", "0", "--ready-file", str(ready)]
    process = subprocess.Popen(argv, preexec_fn=_die_with_parent)
    try:
        wait_for(ready.exists, what="daemon ready file")
        yield process, int(json.loads(ready.read_text())["control_port"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _client(control: ProxyControl, timeout_s: float = 5.0) -> redis.Redis:
    host, port = control.address(LINK)
    return redis.Redis(host=host, port=port, socket_timeout=timeout_s)


def test_daemon_injects_and_clears_faults_over_its_control_port(
    daemon: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, control_port = daemon
    with ProxyControl(control_port) as control:
        assert control.health()
        assert _client(control).ping()
        control.set_fault(LINK, "both", "partition", mode="refuse")
        with pytest.raises(redis.ConnectionError, match="refused"):
            _client(control).ping()
        assert control.status()[LINK]["faults"]["both"] == {"partition": {"mode": "refuse"}}
        control.clear(LINK)
        assert _client(control).ping()
        assert control.stats(LINK)["connections_total"] >= 2


def test_daemon_adds_and_removes_links_at_runtime(
    daemon: tuple[subprocess.Popen[bytes], int], redis_node: RedisNode
) -> None:
    with ProxyControl(daemon[1]) as control:
        host, port = control.add_link(LinkSpec("extra", "127.0.0.1", redis_node.port))
        assert redis.Redis(host=host, port=port, socket_timeout=5).ping()
        control.remove_link("extra")
        assert sorted(control.status()) == [LINK]


def test_daemon_answers_bad_requests_with_the_reason(
    daemon: tuple[subprocess.Popen[bytes], int],
) -> None:
    with ProxyControl(daemon[1]) as control:
        with pytest.raises(UnknownLink):
            control.set_fault("nowhere", "both", "reset")
        with pytest.raises(UsageError, match="refuse"):
            control.set_fault(LINK, "upstream", "partition", mode="refuse")


def test_cli_fault_clear_and_status_drive_the_daemon(
    daemon: tuple[subprocess.Popen[bytes], int],
) -> None:
    port = str(daemon[1])
    runner = CliRunner()
    result = runner.invoke(
        proxy,
        [
            "fault",
            LINK,
            "latency",
            "--direction",
            "downstream",
            "--latency-ms",
            "50",
            "--control-port",
            port,
        ],
    )
    assert result.exit_code == 0, result.output
    status = runner.invoke(proxy, ["status", "--json", "--control-port", port])
    faults = json.loads(status.output)["links"][LINK]["faults"]
    assert faults["downstream"] == {"latency": {"latency_ms": 50, "jitter_ms": 0}}
    assert LINK in runner.invoke(proxy, ["status", "--control-port", port]).output
    assert runner.invoke(proxy, ["clear", LINK, "--control-port", port]).exit_code == 0
    bad = runner.invoke(proxy, ["fault", "nowhere", "reset", "--control-port", port])
    assert bad.exit_code == 2 and "nowhere" in bad.output


def test_daemon_stops_cleanly_on_sigterm(daemon: tuple[subprocess.Popen[bytes], int]) -> None:
    process, control_port = daemon
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    with ProxyControl(control_port, timeout_s=1) as control, pytest.raises(InfrastructureError):
        control.health()


def test_cli_without_a_daemon_says_the_control_port_is_unreachable() -> None:
    result = CliRunner().invoke(proxy, ["status", "--control-port", str(free_port())])
    assert result.exit_code == 2 and "unreachable" in result.output
