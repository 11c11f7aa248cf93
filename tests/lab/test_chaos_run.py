"""`tally lab chaos` in the test command (issue 13, item 6): three seeds of 60 s against the
shipped `tally serve` (hardened profile, tally billing) hold every invariant and the liveness
rule; the 2013 profile with the 2013 billing logic, same command, fails. Run through the CLI a
user types; every process of every run is gone afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tally.cli.main import cli
from tally.lab.serve import lab_processes
from tally.ops.node import orphan_pids

pytestmark = pytest.mark.xdist_group("lab")  # one lab rig at a time (pyproject: --dist loadgroup)

CI_SIZE = ["--duration", "60", "--accounts", "40", "--rate", "60", "--dataset-mb", "2"]


#: Every seed that failed at the default size (200 accounts, 80 op/s, 16 MB, 120 s) in the
#: 20-seed runs of 2026-12-04 (README, "The incident lab"), with what it found and what fixed
#: it; 120 s of workload each, so behind --run-slow (CI runs seeds 1-3 at 60 s, and
#: chaos-seed-2, the 60 s failure in CI, is a scenario of its own).
REGRESSION_SEEDS = {
    2: "a stale replica promoted after compound faults; the ledger held debits the promoted "
    "node never had (the drain fence now waits for every replica the Sentinels know)",
    3: "a serve exited at start on NOREPLICAS and answered too late (its first writes now wait "
    "for a primary)",
    4: "the incident repair's remediate held the schedule for 79 s (it now runs detached)",
    6: "a request whose retry by id was answered counted as unserved (liveness judges requests)",
    7: "as seed 6",
    10: "liveness violated in the first run, not analysed one by one; held in the later runs",
    12: "first Redis above the ledger (as seed 2), later 11 s of NOREPLICAS after the last heal: "
    "Sentinel reconfigured one replica at a time and waited 10 s on a restarting one "
    "(parallel-syncs is now every replica)",
    13: "an acknowledged capture, later a hold and its void, lost to a promotion: judged as "
    "broken holds (the checker now bounds them with the lost acknowledged writes)",
    16: "as seed 13: a void, then a hold and its void",
}


def _chaos(
    out: Path, *args: str, size: tuple[str, ...] = tuple(CI_SIZE)
) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(
        cli, ["lab", "chaos", "--out", str(out), "--json", *size, *args],
        catch_exceptions=False,
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert orphan_pids(str(out)) == [] and lab_processes(str(out)) == []
    return result.exit_code, summary


def _failed(summary: dict[str, object]) -> str:
    """The failed runs, as a str: printed whole (pytest shortens the repr of a list or dict)."""
    runs: list[dict[str, object]] = summary["runs"]  # type: ignore[assignment]
    keys = ("seed", "violated", "liveness_worst_s", "error", "out")
    return json.dumps([{k: r[k] for k in keys} for r in runs if r["exit_code"] != 0], indent=1)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_three_seeds_of_chaos_hold_every_invariant_and_the_liveness_rule(
    tmp_path: Path, seed: int
) -> None:
    """Seeds 1-3 in every test run and in CI (issue 13 item 6), one test each so that the two
    test workers share them (as one `--runs 3` test, 4.6 min on one worker). Seed 2 failed once
    in CI (2026-12-04: 25 accounts with Redis above the ledger, one acknowledged capture
    missing from the ledger, 6 requests unanswered after the heal); its faults are the
    chaos-seed-2 scenario (tests/lab/test_scenarios.py), and what it found is fixed: discovery
    never takes an old primary a Sentinel is failing over, the run settles on one primary
    before its final state is read, liveness is judged from the heal that actually ran, and a
    serve that exits on its own is launched again (README, "The incident lab")."""
    code, summary = _chaos(tmp_path / "chaos", "--seed", str(seed))
    assert summary["seeds"] == [seed]
    why = _failed(summary)
    assert (summary["invariant_violations"], summary["liveness_violations"]) == (0, 0), why
    assert code == 0 and summary["held"] == 1, summary
    for run in summary["runs"]:  # type: ignore[attr-defined]
        assert run["faults"] >= 1 and run["liveness_held"] is True, run


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", sorted(REGRESSION_SEEDS))
def test_the_seeds_that_failed_at_the_default_size_hold(tmp_path: Path, seed: int) -> None:
    """Each seed that failed in a 20-seed run holds now: what it found is in
    ``REGRESSION_SEEDS``."""
    code, summary = _chaos(tmp_path / "chaos", "--seed", str(seed), "--duration", "120", size=())
    assert code == 0 and summary["held"] == 1, _failed(summary)


@pytest.mark.timeout(900)
def test_the_same_chaos_with_the_2013_profile_and_billing_fails(tmp_path: Path) -> None:
    """The control needs no minute to fail (its first fault breaks it): 30 s, not CI's 60."""
    code, summary = _chaos(tmp_path / "chaos-2013", "--seed", "1", "--profile", "2013",
                           "--billing", "legacy", "--duration", "30")  # fmt: skip
    assert code == 1 and summary["invariant_violations"] >= 1, summary
