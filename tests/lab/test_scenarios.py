"""Every scenario in both profiles (each with its billing: 2013 with the legacy control,
hardened with tally). Long: marked slow. Each run must finish, stop every process and produce a
checked report. The control must show the scenario's own damage (its exit code alone proves
nothing: legacy breaks invariant 4 by construction); the subject must end as the scenario says
(exit 0, or 1 where the scenario removes a defence on purpose) and show what it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tally.lab.runner import RunOptions, run
from tally.lab.scenarios import SCENARIOS, unmet
from tally.ops.node import orphan_pids


def promoted_replicas(out: Path) -> set[str]:
    """Replicas the monitor ever saw as master (a Sentinel failover)."""
    seen: set[str] = set()
    for line in (out / "monitor.jsonl").read_text().splitlines():
        sample = json.loads(line)
        if sample.get("kind") == "nodes":
            seen |= {
                n for n, s in sample["nodes"].items() if n != "r1" and s.get("role") == "master"
            }
    return seen


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
    expected = SCENARIOS[scenario]
    figures = result.report["figures"]
    if billing == "legacy":
        assert result.exit_code == 1
        assert not unmet(figures, expected.control_shows), result.report["invariants"]
        assert promoted_replicas(out) == set()  # no Sentinel in 2013
    else:
        assert result.exit_code == expected.subject_exit, result.report["invariants"]
        assert not unmet(figures, expected.subject_shows), figures
        if expected.subject_fails_over:
            assert promoted_replicas(out), "Sentinel never failed over"


def test_every_scenario_states_what_its_control_must_show_or_why_nothing() -> None:
    for scenario in SCENARIOS.values():
        assert bool(scenario.control_shows) != bool(scenario.control_note), scenario.name


def test_unmet_names_each_missed_expectation() -> None:
    figures = {"full_syncs": 1, "partial_syncs": 2}
    assert unmet(figures, (("full_syncs", ">=", 2), ("partial_syncs", "==", 2))) == [
        "full_syncs >= 2 (got 1)"
    ]
    assert unmet(figures, (("missing", "<=", 0),)) == ["missing <= 0 (got None)"]
