"""Issue 12, defects 2 and 4 on a real deployment: a reinstatement is all-or-nothing in SQL and
mirrored to Redis until it holds; a card is never charged for an account that cannot take the
credit, and a charge whose credit is refused is refunded, once, and says so."""

from __future__ import annotations

import pytest

import tally.ledger.sql_accounts as sql_accounts
from tally.billing.recharge.saga import refund_key
from tally.bootstrap import Deployment
from tally.domain.accounts import AccountStatus
from tally.domain.recharge import RechargePhase
from tally.errors import StoreUnavailable
from tally.gateway import FakeGateway
from tests.events.conftest import data_of, outbox

from .conftest import Crash, Faults, complete_all, drain_all, open_customer, wire


def _suspended_for_funding(dep: Deployment) -> None:
    """What a decline past the grace leaves: SQL suspended with its cause, Redis mirroring it."""
    dep.ledger.set_status("acme", AccountStatus.suspended)
    dep.ledger.recharges.add_event("acme", "suspended", "funding_failure", None)
    dep.engine.mirror_account("acme")


def _intent_waiting(dep: Deployment, gw: FakeGateway, point: str = "after_intent") -> str:
    """A recharge planned (and, for ``after_charge``, charged) by a worker that then died."""
    crashing = wire(dep, gw, fault=Faults(point))
    open_customer(crashing, dep)
    opened = dep.engine.debit("u1", "acme", 600)
    with pytest.raises(Crash):
        crashing.service.notice("acme", 600, opened)
    assert opened.recharge_id is not None
    return opened.recharge_id


def _events(dep: Deployment, action: str) -> int:
    with dep.ledger.transaction() as conn:
        rows = conn.exec_driver_sql(
            "SELECT count(*) FROM account_events WHERE account_id = 'acme' AND action = ?"
            if dep.ledger.dialect == "sqlite"
            else "SELECT count(*) FROM account_events WHERE account_id = 'acme' AND action = %s",
            (action,),
        )
        return int(rows.scalar_one())


def _redis_status(dep: Deployment) -> bytes | None:
    return dep.client.hget(dep.layout.account_key("acme"), "st")  # type: ignore[no-any-return]


def test_a_crash_inside_the_reinstatement_leaves_all_of_it_or_none(
    dep: Deployment, fake_gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the ``reinstated`` event committed, the status change crashed; the re-drive saw
    the event and left the account suspended for good."""
    _intent_waiting(dep, fake_gateway)
    _suspended_for_funding(dep)
    real = sql_accounts.set_status
    crashes = [1]

    def crash_once(conn: object, account_id: str, status: AccountStatus) -> object:
        if status is AccountStatus.active and crashes:
            crashes.pop()
            raise Crash("killed inside the reinstatement")
        return real(conn, account_id, status)  # type: ignore[arg-type]

    monkeypatch.setattr(sql_accounts, "set_status", crash_once)
    with pytest.raises(Crash):
        complete_all(wire(dep, fake_gateway))
    account = dep.ledger.get_account("acme")
    assert account is not None and account.status is AccountStatus.suspended
    assert _events(dep, "reinstated") == 0
    complete_all(wire(dep, fake_gateway))  # a fresh process
    account = dep.ledger.get_account("acme")
    assert account is not None and account.status is AccountStatus.active
    assert _events(dep, "reinstated") == 1
    assert _redis_status(dep) == b"a"


def test_a_store_error_while_mirroring_a_reinstatement_is_re_driven_until_redis_holds_it(
    dep: Deployment, fake_gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: SQL active, Redis suspended, and nothing ever wrote the status again."""
    rid = _intent_waiting(dep, fake_gateway)
    _suspended_for_funding(dep)
    store = dep.engine.store
    real = store.upsert_account
    failures = [1, 2, 3]

    def down(account: object) -> object:
        if failures:
            failures.pop()
            raise StoreUnavailable("the primary is unreachable")
        return real(account)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "upsert_account", down)
    survivor = wire(dep, fake_gateway)
    survivor.completer.run_once(10)
    assert _redis_status(dep) == b"s"  # still suspended in Redis: the store was down
    complete_all(survivor)
    assert _redis_status(dep) == b"a"
    assert dep.engine.debit("u2", "acme", 1).result.name == "ok"
    done = survivor.saga.book.get(rid)
    assert done is not None and done.phase is RechargePhase.succeeded and done.finished


def test_an_intent_for_an_account_closed_while_it_waited_is_not_charged(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    """Before: charged, the credit refused (account_not_active), the saga waiting for ever on
    credit_pending with the account's slot held."""
    rid = _intent_waiting(dep, fake_gateway)
    dep.engine.set_status("acme", AccountStatus.closed)
    survivor = wire(dep, fake_gateway)
    complete_all(survivor)
    assert [r for r in fake_gateway.records() if r.kind == "charge"] == []
    done = survivor.saga.book.get(rid)
    assert done is not None and done.finished and not done.claimed
    assert (done.phase, done.outcome_reason) == (RechargePhase.skipped, "account_closed")
    assert dep.client.hget(dep.layout.account_key("acme"), "ro") is None


def test_a_charge_whose_credit_is_refused_is_refunded_once_and_says_so(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    rid = _intent_waiting(dep, fake_gateway, "after_charge")  # the card is charged
    dep.engine.set_status("acme", AccountStatus.closed)
    survivor = wire(dep, fake_gateway)
    complete_all(survivor)
    complete_all(wire(dep, fake_gateway))  # another completer changes nothing
    records = fake_gateway.records()
    (charge,) = [r for r in records if r.kind == "charge" and r.status == "succeeded"]
    refunds = [r for r in records if r.kind == "refund"]
    assert [(r.idempotency_key, r.charge_id, r.amount_minor, r.status) for r in refunds] == [
        (refund_key(rid), charge.id, charge.amount_minor, "succeeded")
    ]
    done = survivor.saga.book.get(rid)
    assert done is not None and done.finished and not done.claimed
    assert (done.phase, done.outcome_reason) == (
        RechargePhase.skipped,
        "refunded:account_not_active",
    )
    # Dependents hear of it once, in the decision's transaction (before: no event at all).
    (event,) = outbox(dep.ledger, "recharge.refunded")
    assert (event.source, event.account_id) == (f"recharge:{rid}", "acme")
    assert data_of(event) == {
        "recharge_id": rid,
        "account_id": "acme",
        "amount_minor": charge.amount_minor,
        "currency": "USD",
        "charge_id": charge.id,
        "reason": "account_not_active",
    }
    drain_all(dep)
    assert dep.ledger.conservation() == {"USD": 0}
