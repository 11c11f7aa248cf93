"""Every scenario in both profiles (each with its billing: 2013 with the legacy control,
hardened with tally: real `tally serve` processes), in the README's test command and in CI, at a
small size (``CI_SIZE``; a scenario whose faults race Sentinel's timers keeps a slower time
scale). incident-28 runs in tests/lab/test_incident_28.py (both profiles, more assertions), not
again here. Each run must finish, stop every process (no redis-server and no serve left) and
produce a checked report. The control must show the scenario's own damage (its exit code alone proves
nothing: legacy breaks invariant 4 by construction); the subject must end as the scenario says
(exit 0, or 1 where the scenario removes a defence on purpose) and show what it says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tally.lab.runner import RunOptions, run
from tally.lab.scenarios import SCENARIOS, unmet
from tally.lab.serve import lab_processes
from tally.ops.node import orphan_pids

#: one lab rig at a time: its failover timings are real seconds (pyproject: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("lab")

#: time scale, accounts, rate, duration (at scale 1), ballast MB (None: the scenario's own)
CI_SIZE: dict[str, tuple[float, int, float, float | None, int | None]] = {
    "storm-only": (0.5, 40, 60.0, None, None),
    "output-buffer-loop": (0.8, 40, 60.0, None, None),
    "gateway-timeout-after-commit": (0.6, 40, 60.0, None, 2),
    "serve-crash-mid-recharge": (0.6, 40, 60.0, None, 2),
    "retry-through-other-dc": (0.5, 40, 60.0, None, 2),
    "account-closed-mid-recharge": (0.5, 40, 60.0, None, 2),
    "serve-partitions": (0.6, 40, 60.0, None, 2),
    # its claim is a loss beyond the bound (rate x (max-lag + 2 s)): the cut must outlast that
    "primary-dc-partition-no-min-replicas": (1.0, 40, 60.0, None, 2),
    # the primary is back (started, or SIGCONT) 12 s / 10 s after it went: at 0.8 that left a
    # busy 2-core machine too little time to fail over (seen: primary-crash, no promotion)
    "primary-crash": (1.0, 40, 60.0, None, 2),
    "primary-pause": (1.0, 40, 60.0, None, 2),
    "failover-then-recharge": (1.0, 40, 60.0, None, 2),
    # two failovers in 35 s: Sentinel's own timers (down-after, 2 x failover-timeout) are real
    "chaos-seed-2": (1.0, 40, 60.0, None, 2),
}
#: Sentinel's down-after (5 s) and min-replicas-max-lag (10 s) are real seconds: a fault that
#: must outlast them keeps its length
FAILOVER_SIZE = (0.8, 40, 60.0, None, 2)


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


@pytest.mark.timeout(600)
@pytest.mark.parametrize("profile,billing", [("2013", "legacy"), ("hardened", "tally")])
@pytest.mark.parametrize("scenario", sorted(set(SCENARIOS) - {"incident-28"}))
def test_every_scenario_runs_in_both_profiles_and_is_checked(
    tmp_path: Path, scenario: str, profile: str, billing: str
) -> None:
    out = tmp_path / "run"
    scale, accounts, rate, duration, dataset_mb = CI_SIZE.get(scenario, FAILOVER_SIZE)
    options = RunOptions(scenario, profile, billing, 3, out, scale, accounts, rate, duration,
                         dataset_mb=dataset_mb)  # fmt: skip
    result = run(options)
    assert orphan_pids(str(tmp_path)) == []
    assert lab_processes(str(tmp_path)) == [], "a process of the run is still there"
    assert result.exit_code in (0, 1), result.report.get("error")
    assert (out / "report.html").is_file()
    expected = SCENARIOS[scenario]
    figures = result.report["figures"]
    if billing == "legacy":
        assert result.exit_code == 1
        assert not unmet(figures, expected.control_shows), result.report["invariants"]
        assert promoted_replicas(out) == set()  # no Sentinel in 2013
    else:
        assert result.exit_code == expected.subject_exit, _why(result.report, out)
        assert not unmet(figures, expected.subject_shows), figures
        if expected.subject_fails_over:
            assert promoted_replicas(out), (
                f"Sentinel never failed over: {result.report['timeline']}"
            )
        settle = result.report["settle"]
        assert settle["serve_clean_exit"], settle["serve_exit_codes"]  # SIGINT: exit 0
        assert result.report["ledger"]["shared_by"] == ["serve-dc1", "serve-dc2"]
        for k, dc in enumerate(("dc1", "dc2"), 1):  # what an operator types, in its DC
            argv = (out / "serve" / f"serve-{dc}.log").read_text().splitlines()[0]
            assert " -m tally serve " in argv and "--redis-url sentinel://" in argv, argv
            assert f"--source-address 127.0.{k}.1 " in argv, argv


def _why(report: dict[str, Any], out: Path) -> str:
    """What a failed run's message must carry whole (pytest cuts a long dict short, and CI's
    run directory is gone afterwards): each violated invariant's detail, how the run settled,
    its timeline, and where its directory was."""
    violated = {k: v["detail"] for k, v in report["invariants"].items() if not v["held"]}
    return json.dumps({"violated": violated, "settle": report.get("settle"),
                       "timeline": report.get("timeline"), "out": str(out)}, indent=1)  # fmt: skip


def test_every_scenario_states_what_its_control_must_show_or_why_nothing() -> None:
    for scenario in SCENARIOS.values():
        assert bool(scenario.control_shows) != bool(scenario.control_note), scenario.name


def test_unmet_names_each_missed_expectation() -> None:
    figures = {"full_syncs": 1, "partial_syncs": 2}
    assert unmet(figures, (("full_syncs", ">=", 2), ("partial_syncs", "==", 2))) == [
        "full_syncs >= 2 (got 1)"
    ]
    assert unmet(figures, (("missing", "<=", 0),)) == ["missing <= 0 (got None)"]


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_a_postgresql_ledger_is_a_fresh_database_each_serve_reaches_through_its_own_link(
    tmp_path: Path,
) -> None:
    """Item 2 of issue 13: given a PostgreSQL server, the run's ledger is a database made for
    it; every serve reaches it through a proxy link (so cut_serve ledger cuts it), the checker
    reads it, report.json says postgresql, and the database is gone after the check."""
    import sqlalchemy as sa

    from tests.conftest import postgres_url

    base = postgres_url()
    if base is None:
        pytest.skip("set TALLY_TEST_POSTGRES_URL to run PostgreSQL tests")
    out = tmp_path / "run"
    options = RunOptions("serve-partitions", "hardened", "tally", 3, out, 0.6, 40, 60.0,
                         dataset_mb=2, ledger_url=base)  # fmt: skip
    result = run(options)
    assert orphan_pids(str(tmp_path)) == [] and lab_processes(str(tmp_path)) == []
    assert result.exit_code == 0, result.report.get("error") or result.report["invariants"]
    ledger = result.report["ledger"]
    assert ledger["kind"] == "postgresql" and ledger["through_proxy"] is True
    cut = [e for e in result.report["timeline"] if e["action"] == "cut_serve"]
    assert any(e["ok"] and "serve-dc1-to-ledger" in e["detail"] for e in cut), cut
    assert result.report["figures"]["accounts_drifted"] == 0
    assert result.report["invariants"]["3_balance_equals_ledger"]["held"]
    argv = (out / "serve" / "serve-dc1.log").read_text().splitlines()[0]
    assert f"/{ledger['database']}" in argv and "postgresql://" in argv
    engine = sa.create_engine("postgresql+psycopg://" + base.split("://", 1)[1])
    try:
        with engine.connect() as conn:
            left = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": ledger["database"]}
            ).all()
    finally:
        engine.dispose()
    assert left == []
