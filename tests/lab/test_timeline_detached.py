"""A detached timeline step (the chaos run's remediate) does not hold the schedule, and it is
not a heal for the liveness rule. The 20-seed chaos run (2026-12-04, seed 4): remediate took 79 s
through the admin API, every later step and heal ran behind its plan, and no request was left
to judge. Without ``Step.detached`` the fast step below runs after the slow one (at 1 s)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from tally.lab.chaos import healed_ms
from tally.lab.timeline import EventLog, Step, Timeline

SLOW_S = 1.0


class _Operator:
    def __init__(self) -> None:
        self.stop = threading.Event()

    def run(self, action: str, args: dict[str, Any]) -> str:
        if action == "slow":
            time.sleep(SLOW_S)
        return action


def test_a_detached_step_does_not_hold_later_steps_and_the_run_waits_for_it(
    tmp_path: Path,
) -> None:
    events = EventLog(tmp_path / "events.jsonl")
    steps = [
        Step(0.0, "slow", fault=False, detached=True),
        Step(0.1, "fast", fault=False),
    ]
    Timeline(steps, _Operator(), events, 1.0).run(time.monotonic(), tick=lambda: None, tick_s=0.05)  # type: ignore[arg-type]
    by_action = {e["action"]: e for e in events.events}
    assert set(by_action) == {"slow", "fast"}  # the run ended after the detached step did
    assert by_action["fast"]["at_s"] < SLOW_S / 2
    assert by_action["slow"]["detached"] is True and by_action["slow"]["took_ms"] >= 900
    events.close()


def test_liveness_is_judged_from_the_last_heal_not_from_a_detached_step() -> None:
    timeline = [
        {"t_ms": 10_000, "took_ms": 100, "fault": False, "action": "heal"},
        {"t_ms": 9_000, "took_ms": 79_000, "fault": False, "action": "billing", "detached": True},
    ]
    assert healed_ms(timeline, planned_ms=5_000) == 10_100
