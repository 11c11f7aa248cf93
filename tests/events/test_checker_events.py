"""Item 7: the checker's rule "every suspension, reinstatement and recharge outcome has exactly
one event in the outbox, and no event lacks its decision", on ledgers built here."""

from __future__ import annotations

import sqlalchemy as sa

from tally.bootstrap import Deployment
from tally.domain.accounts import AccountStatus
from tally.gateway import FakeGateway
from tally.lab.checker_events import check_events
from tests.recharge.conftest import CARD, complete_all, drain_all, open_customer, wire


def _busy_ledger(dep: Deployment, gw: FakeGateway) -> None:
    """Every kind of decision: a recharge that succeeds, declines up to a suspension, a top-up
    that reinstates, an operator close, a freeze and an unfreeze."""
    r = wire(dep, gw)
    open_customer(r, dep, "ok-acct")
    dep.engine.debit("ok-1", "ok-acct", 600)
    drain_all(dep)
    complete_all(r)
    gw.set_faults(card_decline_rates={CARD: 1.0})
    open_customer(r, dep, declines_max=2)
    for n, amount in enumerate((600, 10)):
        opened = dep.engine.debit(f"u{n}", "acme", amount)
        r.service.notice("acme", amount, opened)
    r.service.top_up("topup-1", "acme", 5000, "USD")
    dep.engine.set_status("ok-acct", AccountStatus.closed)
    dep.ledger.recharges.set_freeze(True, "drill", "ops")
    dep.ledger.recharges.set_freeze(False, "over", "ops")


def _sql(dep: Deployment, statement: str) -> None:
    with dep.ledger.transaction(write=True) as conn:
        conn.execute(sa.text(statement))


def test_a_ledger_where_every_decision_has_its_event_holds(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    _busy_ledger(dep, fake_gateway)
    verdict = check_events(dep.settings.ledger_url)
    assert verdict["held"], verdict["detail"]
    # 1 success + 2 declines + 1 suspension + 1 reinstatement + 2 freeze rows
    assert verdict["decisions"] == 7
    assert verdict["events"] == 8  # and the operator's close


def test_a_decision_whose_event_is_missing_is_reported(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    """The rule can fail: delete the suspension's event behind the ledger's back."""
    _busy_ledger(dep, fake_gateway)
    _sql(dep, "DELETE FROM events WHERE type = 'account.suspended'")
    verdict = check_events(dep.settings.ledger_url)
    assert not verdict["held"]
    assert "1 decisions without an event (e.g. account_event:" in verdict["detail"]


def test_an_event_without_its_decision_is_reported(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    _busy_ledger(dep, fake_gateway)
    _sql(
        dep,
        "INSERT INTO events (event_id, type, source, account_id, data, created_at_ms) VALUES "
        "('evt_x', 'recharge.succeeded', 'recharge:never-was', 'acme', '{}', 0),"
        "('evt_y', 'recharge.failed', NULL, 'acme', '{}', 0),"
        "('evt_z', 'account.closed', NULL, 'ghost', '{\"cause\":\"operator\"}', 0)",
    )
    verdict = check_events(dep.settings.ledger_url)
    assert not verdict["held"]
    assert "3 events without their decision" in verdict["detail"]


def test_an_event_of_the_wrong_type_for_its_decision_is_reported(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    _busy_ledger(dep, fake_gateway)
    _sql(dep, "UPDATE events SET type = 'recharge.failed' WHERE type = 'recharge.succeeded'")
    verdict = check_events(dep.settings.ledger_url)
    assert not verdict["held"] and "1 events of the wrong type" in verdict["detail"]


def test_a_ledger_without_an_outbox_does_not_hold(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE accounts (id TEXT)"))
    engine.dispose()
    assert check_events(url) == {
        "held": False,
        "detail": "the ledger has no events outbox",
        "decisions": 0,
    }


def test_a_refund_without_its_recharge_refunded_event_is_reported(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    """A refunded recharge is a decision too (before: no event, and the checker did not ask):
    turn the succeeded recharge into a refunded one whose event is missing."""
    _busy_ledger(dep, fake_gateway)
    _sql(
        dep,
        "UPDATE recharges SET phase = 'skipped', outcome_reason = 'refunded:account_not_active' "
        "WHERE phase = 'succeeded'",
    )
    _sql(dep, "DELETE FROM events WHERE type = 'recharge.succeeded'")
    verdict = check_events(dep.settings.ledger_url)
    assert not verdict["held"]
    assert "1 decisions without an event (e.g. recharge:" in verdict["detail"]
