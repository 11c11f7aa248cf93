"""Invariant 10 as the lab judges it, from hold_events rows and the client history alone: each
break is shown next to the same hold without it (so the rule can fail, and fails for its own
reason)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tally.lab.checker_holds import check_holds, judge
from tally.lab.history import Operation


def _row(hold: str, event: str, ts: int, expires: int | None = None) -> Any:
    return SimpleNamespace(hold_id=hold, event=event, ts_ms=ts, expires_at_ms=expires)


def _ack(f: str, hold: str, status: str) -> Operation:
    return Operation(1, f, 0, 0, {"id": hold}, "ok", 1, {"result": "ok", "status": status})


def test_holds_that_end_once_before_their_expiry_hold() -> None:
    rows = [_row("h1", "placed", 0, 2000), _row("h1", "captured", 1500),
            _row("h2", "placed", 0, 2000), _row("h2", "expired", 2001)]  # fmt: skip
    verdict = judge(rows, [_ack("capture", "h1", "captured")])
    assert verdict == {
        "held": True,
        "detail": "2 holds, each ended at most once, none captured after its expiry",
        "holds": 2,
    }


def test_a_hold_that_ended_twice_breaks_it() -> None:
    rows = [
        _row("h1", "placed", 0, 2000),
        _row("h1", "captured", 1500),
        _row("h1", "expired", 2001),
    ]
    verdict = judge(rows, [])
    assert not verdict["held"] and "1 holds ended twice (e.g. h1)" in verdict["detail"]


def test_a_capture_after_the_expiry_breaks_it() -> None:
    rows = [_row("h1", "placed", 0, 2000), _row("h1", "captured", 2001)]
    verdict = judge(rows, [])
    assert not verdict["held"] and "captured after their expiry (e.g. h1)" in verdict["detail"]


def test_an_acknowledged_void_the_ledger_does_not_show_breaks_it() -> None:
    rows = [_row("h1", "placed", 0, 2000), _row("h1", "expired", 2001)]
    assert judge(rows, [])["held"]
    verdict = judge(rows, [_ack("void", "h1", "voided")])
    assert not verdict["held"] and "the ledger does not show (e.g. h1)" in verdict["detail"]


def test_a_missing_ledger_is_reported_and_never_created(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    verdict = check_holds(f"sqlite:///{path}", [])
    assert not verdict["held"] and not path.exists()
