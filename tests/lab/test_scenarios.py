"""Every scenario in both profiles (each with its billing: 2013 with the legacy control,
hardened with tally). Long: marked slow. Each run must finish, stop every process and produce a
checked report; the hardened/tally runs must hold every invariant."""

from __future__ import annotations

from pathlib import Path

import pytest

from tally.lab.runner import RunOptions, run
from tally.lab.scenarios import SCENARIOS
from tally.ops.node import orphan_pids


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("profile,billing", [("2013", "legacy"), ("hardened", "tally")])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_scenario_runs_in_both_profiles_and_is_checked(
    tmp_path: Path, scenario: str, profile: str, billing: str
) -> None:
    out = tmp_path / "run"
    result = run(RunOptions(scenario, profile, billing, 3, out, 0.8, 80, 40.0))
    assert orphan_pids(str(tmp_path)) == []
    assert result.exit_code in (0, 1), result.report.get("error")
    assert (out / "report.html").is_file()
    if billing == "tally":
        assert result.exit_code == 0, result.report["invariants"]
