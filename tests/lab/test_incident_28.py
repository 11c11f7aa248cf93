"""Incident #28 replayed on real processes, in both profiles, at a small size.

The 2013 profile with the legacy billing must reproduce the incident (the checker must be able to
fail); the hardened profile with tally must hold every invariant under the same faults and the
same operator mistakes. Assertions are on counts from the artefacts, never on timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tally.lab.runner import RunOptions, run
from tally.ops.node import orphan_pids
from tests.browser import render

#: one lab rig at a time: its failover timings are real seconds (pyproject: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("lab")

SMALL = {"time_scale": 0.7, "accounts": 60, "rate": 40.0}
ZERO_FOR_TALLY = (
    "cards_charged_more_than_once",
    "charges_without_credit",
    "payments_lost",
    "debits_acknowledged_lost",
    "wrongful_suspensions",
    "accounts_drifted",
    "conservation_error_minor",
)


def _run(tmp_path: Path, profile: str, billing: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = tmp_path / f"{profile}-{billing}"
    result = run(RunOptions("incident-28", profile, billing, 7, out, **SMALL))  # type: ignore[arg-type]
    assert orphan_pids(str(tmp_path)) == [], "redis-server left running"
    for name in ("report.json", "report.html", "history.jsonl", "gateway.jsonl", "ledger.sqlite3"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text())["exit_code"] == result.exit_code
    return result.exit_code, result.report


@pytest.mark.timeout(900)
def test_the_2013_profile_fails_tally_withstands_the_same_faults_and_compare_shows_both(
    tmp_path: Path,
) -> None:
    """Both runs in one test: `tally lab compare` needs both, and the two runs are most of this
    module's time (as three tests on two xdist workers, each worker ran them again)."""
    code, report = _run(tmp_path, "2013", "legacy")
    figures = report["figures"]
    assert code == 1
    assert figures["full_syncs"] >= 2  # the storm: every remote replica full-synced
    assert figures["cards_charged_more_than_once"] > 0
    assert figures["payments_lost"] > 0
    assert figures["charges_without_credit"] > 0
    assert not report["invariants"]["5_one_credit_per_charge"]["held"]
    assert not report["invariants"]["8_recharge_only_when_healthy"]["held"]

    code, report = _run(tmp_path, "hardened", "tally")
    figures = report["figures"]
    assert code == 0, report["invariants"]
    for name in ZERO_FOR_TALLY:
        assert figures[name] == 0, name
    assert figures["partial_syncs"] >= 2  # the storm became partial resyncs
    restart = [e for e in report["timeline"] if e["action"] == "restart"]
    assert restart and "slave" in restart[0]["detail"]  # the operator's mistake did happen

    _compare_renders_both(tmp_path, [tmp_path / "2013-legacy", tmp_path / "hardened-tally"])


def _compare_renders_both(tmp_path: Path, dirs: list[Path]) -> None:
    """`tally lab compare DIR_A DIR_B --out PAGE.html`, opened in headless Chromium: offline,
    no script errors."""
    page = tmp_path / "compare.html"
    out = subprocess.run(
        [sys.executable, "-m", "tally.cli", "lab", "compare", *map(str, dirs), "--out",
         str(page)], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = page.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    rendered = render(page, screenshot=tmp_path / "compare.png")
    assert rendered.console_errors == []
    assert rendered.fetched == []
    assert rendered.dom.count("<svg") == 8  # four timelines per run
    assert "2013 profile, legacy billing" in rendered.dom
    assert "hardened profile, tally billing" in rendered.dom
    assert rendered.dom.count("VIOLATED") >= 1 and "exit 0" in rendered.dom


@pytest.mark.parametrize("bad", [{"scenario": "no-such"}, {"profile": "2014"},
                                 {"billing": "cash"}, {"time_scale": 0.0}])  # fmt: skip
def test_bad_arguments_are_a_usage_error_with_exit_code_2(tmp_path: Path, bad: dict) -> None:  # type: ignore[type-arg]
    options = {"scenario": "incident-28", "out": tmp_path / "run", **bad}
    result = run(RunOptions(**options))
    assert result.exit_code == 2
    assert "usage" in result.report["error"]


def test_compare_refuses_a_directory_that_holds_no_finished_run(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tally.cli", "lab", "compare", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "not a lab run directory" in out.stderr and "Traceback" not in out.stderr
