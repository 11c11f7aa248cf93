"""``tally gateway serve | export | faults``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tally.cli import gateway_cmd
from tally.cli.gateway_cmd import parse_fault_items
from tally.errors import UsageError
from tally.gateway import OutcomeStatus
from tally.gateway.client import HttpGateway
from tally.gateway.process import SimulatorProcess
from tally.gateway.server import READY_FILENAME
from tests.gateway.conftest import assert_gone

START_DEADLINE_S = 20.0


def test_gateway_is_a_click_group_with_serve_export_and_faults() -> None:
    assert isinstance(gateway_cmd.gateway, click.Group)
    assert {"serve", "export", "faults"} <= set(gateway_cmd.gateway.commands)


def test_fault_items_take_json_values_and_bare_words() -> None:
    patch = parse_fault_items(
        ("latency_ms=5", 'card_decline_rates={"c1": 1}', "timeout_mode=delay")
    )
    assert patch == {"latency_ms": 5, "card_decline_rates": {"c1": 1}, "timeout_mode": "delay"}


@pytest.mark.parametrize("item", ["latency_ms", "nope=1", "latency_ms=-5"])
def test_bad_fault_items_are_refused(item: str) -> None:
    with pytest.raises(UsageError):
        parse_fault_items((item,))


def wait_for_ready_file(path: Path, proc: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file():
            return dict(json.loads(path.read_text()))
        time.sleep(0.02)
    raise AssertionError(f"no {path} (exit code {proc.poll()})")


def test_serve_runs_the_simulator_with_faults_from_flags(tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "tally.cli.gateway_cmd", "serve", "--port", "0",
        "--data-dir", str(tmp_path), "--fault", "velocity_max_charges=1",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = wait_for_ready_file(tmp_path / READY_FILENAME, proc)
        with HttpGateway(str(ready["url"])) as gw:
            first = gw.charge("k1", "card_1", 500, "USD")
            second = gw.charge("k2", "card_1", 500, "USD")
        assert (first.status, second.status) == (OutcomeStatus.succeeded, OutcomeStatus.declined)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert_gone(proc.pid)


def test_export_from_the_data_dir_and_from_the_url_agree(
    simulator: SimulatorProcess, tmp_path: Path
) -> None:
    with simulator.gateway() as gw:
        gw.charge("k1", "card_1", 500, "USD")
        gw.charge("k2", "card_2", 700, "USD")
    runner = CliRunner()
    from_dir = runner.invoke(gateway_cmd.gateway, ["export", "--data-dir", str(simulator.data_dir)])
    to_file = tmp_path / "gateway.jsonl"
    from_url = runner.invoke(
        gateway_cmd.gateway, ["export", "--url", simulator.url, "--out", str(to_file)]
    )
    assert from_dir.exit_code == 0 and from_url.exit_code == 0, from_dir.output + from_url.output
    dir_lines = [line for line in from_dir.stdout.splitlines() if line.startswith("{")]
    assert dir_lines == to_file.read_text().splitlines()
    assert [json.loads(line)["idempotency_key"] for line in dir_lines] == ["k1", "k2"]


def test_export_of_a_dir_without_records_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(gateway_cmd.gateway, ["export", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no gateway records" in result.output


def test_faults_command_changes_knobs_at_runtime(simulator: SimulatorProcess) -> None:
    result = CliRunner().invoke(
        gateway_cmd.gateway, ["faults", "--url", simulator.url, "--fault", "outage=true"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outage"] is True
    with simulator.admin() as admin:
        assert admin.faults().outage
