"""Holds reach the ledger of record through the journal: each hold's life as events, the
capture as a debit posting, held sums derived from them; reconcile compares held (and so the
available balance) as well as posted balances; a rebuild restores holds with their expiry."""

from __future__ import annotations

import sqlalchemy as sa

from tally.bootstrap import Deployment
from tally.domain.accounts import Account
from tally.domain.holds import HoldCode, HoldStatus, capture_transfer_id
from tally.domain.results import Result
from tally.ledger import sql_outbox
from tally.ledger.journal import parse_hold_line
from tally.ledger.models import LineBatch, Position, StreamId
from tally.ledger.sql_holds import hold_events
from tally.sync.drainer import Drainer
from tally.sync.rebuild import rebuild
from tally.sync.reconcile import reconcile
from tests.holds.conftest import wait_past

LONG_MS = 600_000


def drain_all(dep: Deployment) -> None:
    drainer = Drainer(dep.client, dep.layout, dep.ledger)
    for _ in range(100):
        if drainer.run_once() == 0:
            return
    raise AssertionError("journal did not drain")


def _life(dep: Deployment) -> None:
    """alice: 100 in; h1 40 captured 25; h2 30 voided; h3 10 expired (swept); h4 20 open."""
    eng = dep.engine
    assert eng.create_account(Account("alice", "USD")) is Result.ok
    assert eng.credit("fund", "alice", 100, "USD").result is Result.ok
    assert eng.place_hold("h1", "alice", 40, LONG_MS).code is HoldCode.ok
    assert eng.place_hold("h2", "alice", 30, LONG_MS).code is HoldCode.ok
    short = eng.place_hold("h3", "alice", 10, 1)
    assert short.code is HoldCode.ok and short.expires_at_ms is not None
    assert eng.place_hold("h4", "alice", 20, LONG_MS).code is HoldCode.ok
    assert eng.capture_hold("h1", 25).code is HoldCode.ok
    assert eng.void_hold("h2").code is HoldCode.ok
    wait_past(dep.client, short.expires_at_ms)
    assert eng.sweep_holds() == 1


def test_the_ledger_shows_each_holds_life_and_balances_derived_from_it(dep: Deployment) -> None:
    _life(dep)
    state = dep.engine.account("alice")
    assert state is not None
    assert (state.balance_minor, state.held_minor, state.available_minor) == (75, 20, 55)
    drain_all(dep)
    ledger = dep.ledger
    statuses = {h: ledger.get_hold(h) for h in ("h1", "h2", "h3", "h4")}
    assert {h: r.status for h, r in statuses.items() if r} == {
        "h1": HoldStatus.captured,
        "h2": HoldStatus.voided,
        "h3": HoldStatus.expired,
        "h4": HoldStatus.open,
    }
    h1 = statuses["h1"]
    assert h1 is not None and (h1.captured_minor, h1.capture_transfer_id) == (
        25,
        capture_transfer_id("h1"),
    )
    assert ledger.balance_of("alice") == 75, "the capture is a debit posting"
    assert ledger.held(["alice"]) == {"alice": 20}
    with ledger.transaction() as conn:
        events = sorted(conn.execute(sa.select(hold_events.c.hold_id, hold_events.c.event)).all())
    assert events == [
        ("h1", "captured"),
        ("h1", "placed"),
        ("h2", "placed"),
        ("h2", "voided"),
        ("h3", "expired"),
        ("h3", "placed"),
        ("h4", "placed"),
    ]
    report = reconcile(dep.client, dep.layout, dep.ledger)
    assert report.ok, report.drift


def test_an_expired_hold_has_exactly_one_hold_expired_event_written_with_its_drain(
    dep: Deployment,
) -> None:
    """The expiry reaches dependents: one ``hold.expired`` (and none for the captured, voided
    and open holds), in the drain's transaction; draining the journal again adds none."""
    _life(dep)
    drain_all(dep)
    with dep.ledger.transaction() as conn:
        found = sql_outbox.events_after(conn, 0, sql_outbox.PAGE_MAX)
    expired = [e for e in found if e.type == "hold.expired"]
    assert [(e.account_id, e.source) for e in expired] == [("alice", "hold:h3")]
    assert expired[0].payload()["data"] == {
        "hold_id": "h3",
        "account_id": "alice",
        "amount_minor": 10,
        "currency": "USD",
        "expired_at_ms": expired[0].payload()["data"]["expired_at_ms"],
        "held_after_minor": 20,  # h4 is still open
    }
    drain_all(dep)
    with dep.ledger.transaction() as conn:
        again = sql_outbox.events_after(conn, 0, sql_outbox.PAGE_MAX)
    assert len([e for e in again if e.type == "hold.expired"]) == 1


def test_reconcile_counts_undrained_hold_lines_and_finds_a_held_drift(dep: Deployment) -> None:
    """Before draining, held comes from the journal's lines (no false drift); a store whose
    held sum differs from what the ledger and journal say is reported as ``held`` drift (the
    check that would be missing without the available-balance comparison)."""
    _life(dep)
    assert reconcile(dep.client, dep.layout, dep.ledger).ok
    drain_all(dep)
    key = dep.layout.account_key("alice")
    dep.client.hset(key, "hd", 5)
    report = reconcile(dep.client, dep.layout, dep.ledger)
    assert [(d.account, d.reason, d.diff_minor) for d in report.drift] == [("alice", "held", 15)]


def test_a_redelivered_hold_line_is_a_duplicate_and_another_value_a_conflict(
    dep: Deployment,
) -> None:
    _life(dep)
    drain_all(dep)
    epoch = dep.ledger.current_epoch()
    assert epoch is not None
    pos = Position(epoch.epoch_id, 0, StreamId(1, 0), 0)
    same = parse_hold_line(f"@h|p|h4|alice|20|USD|0|75|20|{10**12}|1")
    other = parse_hold_line(f"@h|p|h4|alice|21|USD|0|75|20|{10**12}|1")
    report = dep.ledger.apply_batch(LineBatch(holds=[(same, pos)]))
    assert (report.inserted, report.duplicates, report.conflicts) == (0, 1, 0)
    report = dep.ledger.apply_batch(LineBatch(holds=[(other, pos)]))
    assert (report.inserted, report.conflicts) == (0, 1)
    h4 = dep.ledger.get_hold("h4")
    assert h4 is not None and h4.amount_minor == 20, "the first value stays"


def test_a_rebuild_restores_holds_with_their_expiry_and_replays(dep: Deployment) -> None:
    """After a rebuild: the open hold still reserves its amount (debits see it), it can be
    captured, its expiry index entry is back (the sweeper finds it), and replays of finished
    holds return their first outcomes."""
    _life(dep)
    eng = dep.engine
    before = {h: eng.get_hold(h) for h in ("h1", "h2", "h3", "h4")}
    capture_replay = eng.capture_hold("h1", 25)
    drain_all(dep)
    rebuild(dep.client, dep.layout, dep.ledger, force=True)
    assert {h: eng.get_hold(h) for h in before} == before
    assert eng.capture_hold("h1", 25) == capture_replay
    assert eng.void_hold("h2").replayed
    state = eng.account("alice")
    assert state is not None and (state.balance_minor, state.held_minor) == (75, 20)
    assert eng.debit("big", "alice", 56).result is Result.insufficient_funds
    shard = dep.layout.shard_of("alice")
    assert (
        dep.client.zscore(dep.layout.hold_expiries(shard), "alice|h4") == before["h4"].expires_at_ms
    )
    assert reconcile(dep.client, dep.layout, dep.ledger).ok
