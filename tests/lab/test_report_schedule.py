"""A chaos run's page draws its schedule on the plots' time axis (issue 13, item 7): one bar per
fault window, named and timed, and the liveness verdict; a scenario run has no such section."""

from __future__ import annotations

from pathlib import Path

from tally.lab import report
from tests.lab.artefacts import Run
from tests.lab.test_checker import clean_run

SCHEDULE = [
    {"at_s": 2.0, "fault": "kill_node", "target": "r2", "healed_at_s": 6.0},
    {"at_s": 3.5, "fault": "partition_dc", "target": "dc3", "healed_at_s": 9.0},
]


def _page(run: Run, **body: object) -> str:
    run_dir = run.write()
    base = {"scenario": "chaos", "profile": "hardened", "billing": "tally", "seed": 7,
            "time_scale": 0.5, "ok": True, "exit_code": 0}  # fmt: skip
    return report.write_html(run_dir, {**base, **body}).read_text()


def test_the_chaos_schedule_is_drawn_with_each_window_and_the_liveness_verdict(
    tmp_path: Path,
) -> None:
    page = _page(clean_run(tmp_path), schedule=SCHEDULE,
                 liveness={"held": True, "bound_s": 5.0, "worst_s": 0.3, "since_s": 12.0})  # fmt: skip
    assert "Chaos schedule (seed 7)" in page
    assert page.count("<rect ") == 2
    assert "kill_node r2: 2.0s to 6.0s" in page and "partition_dc dc3: 3.5s to 9.0s" in page
    assert "liveness: held, worst 0.3 s against a bound of 5.0 s after 12.0 s" in page


def test_a_scenario_run_has_no_schedule_section(tmp_path: Path) -> None:
    page = _page(clean_run(tmp_path))
    assert "Chaos schedule" not in page and "<rect " not in page
