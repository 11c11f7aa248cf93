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
        "captures_lost": [],
        "voids_lost": [],
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


def test_an_acknowledged_void_whose_hold_was_captured_breaks_it() -> None:
    rows = [_row("h1", "placed", 0, 2000), _row("h1", "captured", 1500)]
    assert judge(rows, [])["held"]
    verdict = judge(rows, [_ack("void", "h1", "voided")])
    assert not verdict["held"] and "captured or never ended (e.g. h1)" in verdict["detail"]


def test_an_acknowledged_void_whose_hold_expired_is_a_lost_write_the_checker_bounds() -> None:
    """The money came back as the void would have given it back (the 20-seed run, seed 16:
    a void acknowledged with one replica's WAIT, then Sentinel promoted the other replica)."""
    rows = [_row("h1", "placed", 0, 2000), _row("h1", "expired", 2001)]
    verdict = judge(rows, [_ack("void", "h1", "voided")])
    assert verdict["held"] and verdict["voids_lost"] == ["h1"]


def test_an_acknowledged_void_lost_with_its_hold_is_a_lost_write_the_checker_bounds() -> None:
    """The 20-seed run of 2026-12-04, seed 13: a hold and its void both acknowledged on one
    replica's WAIT, then Sentinel promoted a replica that had neither; the ledger has no event of
    that hold, and no money was ever held. A hold placed and never ended still breaks it."""
    acked = [_ack("hold", "h1", "open"), _ack("void", "h1", "voided")]
    verdict = judge([_row("h2", "placed", 0, 2000), _row("h2", "expired", 2001)], acked)
    assert verdict["held"] and verdict["voids_lost"] == ["h1"]
    assert (
        "1 acknowledged voids the ledger shows as expired or lost with their hold"
        in (verdict["detail"])
    )
    placed_only = judge([_row("h1", "placed", 0, 2000)], acked)
    assert not placed_only["held"] and "captured or never ended (e.g. h1)" in placed_only["detail"]


def test_a_missing_ledger_is_reported_and_never_created(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    verdict = check_holds(f"sqlite:///{path}", [])
    assert not verdict["held"] and not path.exists()


def test_an_acknowledged_capture_the_ledger_does_not_show_is_money_not_taken() -> None:
    """Not invariant 10's: returned as ``captures_lost``, which the checker counts with
    invariant 9's acknowledged debits (tests/lab/test_checker.py)."""
    rows = [_row("h1", "placed", 0, 2000), _row("h1", "expired", 2001)]
    verdict = judge(rows, [_ack("capture", "h1", "captured")])
    assert verdict["held"] and verdict["captures_lost"] == ["h1"]
    assert "1 acknowledged captures the ledger does not show" in verdict["detail"]
