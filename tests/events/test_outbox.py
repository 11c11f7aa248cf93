"""The transactional outbox: every decision a dependent must know writes its event in the
decision's own SQL transaction (issue 16, item 5)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tally.billing.recharge.saga import reinstate_funded
from tally.bootstrap import Deployment
from tally.domain.accounts import Account, AccountStatus
from tally.domain.recharge import RechargePhase
from tally.errors import LedgerError, UsageError
from tally.gateway import FakeGateway
from tally.ledger import sql_outbox
from tally.ledger.sql_ledger import SqlLedger
from tests.recharge.conftest import CARD, complete_all, drain_all, open_customer, wire

from .conftest import data_of, outbox


class Boom(Exception):
    pass


def _decline_twice_to_suspension(dep: Deployment, gw: FakeGateway) -> str:
    gw.set_faults(card_decline_rates={CARD: 1.0})
    r = wire(dep, gw)
    open_customer(r, dep, declines_max=2)
    first = dep.engine.debit("u1", "acme", 600)
    r.service.notice("acme", 600, first)
    second = dep.engine.debit("u2", "acme", 10)
    r.service.notice("acme", 10, second)
    assert dep.ledger.get_account("acme").status is AccountStatus.suspended  # type: ignore[union-attr]
    assert second.recharge_id is not None
    return second.recharge_id


def test_a_saga_run_to_suspension_leaves_exactly_one_account_suspended_event(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    """A decision without its event is impossible: the suspension the saga decides has one
    ``account.suspended`` (naming its recharge), and each decline one ``recharge.failed``."""
    suspending = _decline_twice_to_suspension(dep, fake_gateway)
    suspended = outbox(dep.ledger, "account.suspended")
    assert [data_of(e) for e in suspended] == [
        {"account_id": "acme", "cause": "funding_failure", "recharge_id": suspending}
    ]
    failed = outbox(dep.ledger, "recharge.failed")
    assert [data_of(e)["account_suspended"] for e in failed] == [False, True]
    assert {data_of(e)["reason"] for e in failed} == {"card_declined"}
    # Re-driving the finished recharges changes nothing: still one event per decision.
    r = wire(dep, fake_gateway)
    r.saga.drive(suspending)
    assert len(outbox(dep.ledger, "account.suspended")) == 1
    assert len(outbox(dep.ledger, "recharge.failed")) == 2


def test_a_top_up_reinstates_with_one_account_reinstated_event(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    _decline_twice_to_suspension(dep, fake_gateway)
    r = wire(dep, fake_gateway)
    r.service.top_up("topup-1", "acme", 5000, "USD")
    r.service.top_up("topup-1", "acme", 5000, "USD")  # a replay: no second decision
    reinstated = outbox(dep.ledger, "account.reinstated")
    assert [data_of(e) for e in reinstated] == [
        {"account_id": "acme", "cause": "top_up", "recharge_id": None}
    ]


def test_a_successful_recharge_emits_one_recharge_succeeded(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    r = wire(dep, fake_gateway)
    open_customer(r, dep)
    opened = dep.engine.debit("u1", "acme", 600)
    drain_all(dep)
    complete_all(r)
    assert opened.recharge_id is not None
    r.saga.drive(opened.recharge_id)  # finished: nothing more
    events = outbox(dep.ledger, "recharge.succeeded")
    assert len(events) == 1
    assert events[0].source == f"recharge:{opened.recharge_id}"
    assert data_of(events[0])["amount_minor"] == 2000 - 400
    assert events[0].event_id.startswith("evt_") and events[0].account_id == "acme"


def test_a_decision_whose_transaction_rolls_back_leaves_no_event(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    """The reinstatement and its event share the unit of work: a crash inside it leaves the
    account suspended, no ``account_events`` row and no outbox event."""
    _decline_twice_to_suspension(dep, fake_gateway)
    before = outbox(dep.ledger)
    with pytest.raises(Boom), dep.ledger.unit() as uow:
        assert reinstate_funded(uow, "acme", None)
        assert [e.type for e in _in(uow.conn)][-1] == "account.reinstated"  # written, uncommitted
        raise Boom
    assert outbox(dep.ledger) == before
    assert dep.ledger.get_account("acme").status is AccountStatus.suspended  # type: ignore[union-attr]
    assert dep.ledger.recharges.last_event("acme").action == "suspended"  # type: ignore[union-attr]


def _in(conn: sa.Connection) -> list[sql_outbox.StoredEvent]:
    return sql_outbox.events_after(conn, 0, sql_outbox.PAGE_MAX)


def test_a_second_event_for_one_decision_rolls_the_decision_back(ledger: SqlLedger) -> None:
    """One decision, one event, enforced by the database (unique ``source``): a bug that emits
    twice fails the whole transaction, the decision with it."""
    ledger.init_epoch("tally", 4)
    ledger.create_account(Account("a1", "USD"))
    with pytest.raises(LedgerError), ledger.unit() as uow:
        uow.set_status("a1", AccountStatus.suspended)
        uow.emit("account.suspended", {"account_id": "a1"}, source="decision-1")
        uow.emit("account.suspended", {"account_id": "a1"}, source="decision-1")
    assert outbox(ledger) == []
    assert ledger.get_account("a1").status is AccountStatus.active  # type: ignore[union-attr]


def test_emit_refuses_an_unknown_type_or_unencodable_data_and_writes_nothing(
    ledger: SqlLedger,
) -> None:
    with pytest.raises(UsageError, match="unknown event type"), ledger.unit() as uow:
        uow.emit("account.exploded", {})
    with pytest.raises(UsageError, match="not JSON"), ledger.unit() as uow:
        uow.emit("hold.expired", {"amount": float("nan")})
    with pytest.raises(UsageError, match="exceeds"), ledger.unit() as uow:
        uow.emit("hold.expired", {"blob": "x" * 10_000})
    assert outbox(ledger) == []


def test_hold_expired_has_a_one_call_emit_for_the_holds_code(ledger: SqlLedger) -> None:
    with ledger.unit() as uow:
        first = uow.emit("hold.expired", {"hold_id": "h1"}, account_id="a1", source="hold:h1")
    with ledger.unit() as uow:
        second = uow.emit("hold.expired", {"hold_id": "h2"}, account_id="a1", source="hold:h2")
    assert second.cursor > first.cursor and second.event_id != first.event_id
    assert [e.payload()["data"] for e in outbox(ledger)] == [{"hold_id": "h1"}, {"hold_id": "h2"}]


def test_operator_status_changes_emit_their_events_and_a_no_op_emits_none(
    ledger: SqlLedger,
) -> None:
    ledger.init_epoch("tally", 4)
    ledger.create_account(Account("a1", "USD"))
    ledger.set_status("a1", AccountStatus.suspended)
    ledger.set_status("a1", AccountStatus.suspended)  # no change, no event
    ledger.set_status("a1", AccountStatus.active)
    ledger.set_status("a1", AccountStatus.closed)
    assert ledger.set_status("nobody", AccountStatus.closed).name == "account_not_found"
    got = [(e.type, data_of(e)["from"], data_of(e)["cause"]) for e in outbox(ledger)]
    assert got == [
        ("account.suspended", "active", "operator"),
        ("account.reinstated", "suspended", "operator"),
        ("account.closed", "active", "operator"),
    ]


def test_freeze_and_unfreeze_each_emit_one_event(dep: Deployment) -> None:
    book = dep.ledger.recharges
    book.set_freeze(True, "incident 42", "ops")
    book.set_freeze(False, "resolved", "ops")
    got = [(e.type, data_of(e)) for e in outbox(dep.ledger)]
    assert got == [
        ("billing.frozen", {"reason": "incident 42", "actor": "ops"}),
        ("billing.unfrozen", {"reason": "resolved", "actor": "ops"}),
    ]


def test_a_waiting_recharge_emits_one_event_per_waiting_episode_not_per_poll(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    """Frozen: every drive polls the gate and waits; one ``recharge.waiting`` (reason frozen)
    for the episode. After the freeze, the recharge succeeds."""
    r = wire(dep, fake_gateway)
    open_customer(r, dep)
    dep.ledger.recharges.set_freeze(True, "incident", "ops")
    opened = dep.engine.debit("u1", "acme", 600)
    assert opened.recharge_id is not None
    drain_all(dep)
    for _ in range(5):
        r.saga.drive(opened.recharge_id)
    waiting = outbox(dep.ledger, "recharge.waiting")
    assert [(data_of(e)["reason"], data_of(e)["phase"]) for e in waiting] == [("frozen", "opened")]
    assert data_of(waiting[0])["detail"].startswith("frozen: incident")
    dep.ledger.recharges.set_freeze(False, "over", "ops")
    complete_all(r)
    assert r.saga.book.get(opened.recharge_id).phase is RechargePhase.succeeded  # type: ignore[union-attr]
    assert len(outbox(dep.ledger, "recharge.waiting")) == 1
    assert len(outbox(dep.ledger, "recharge.succeeded")) == 1


def test_balance_low_is_emitted_once_per_crossing_in_the_drainers_transaction(
    dep: Deployment,
) -> None:
    """Below the threshold twice in a row: one event; back above (re-armed) and below again:
    a second. Crossings are judged on the ledger balance after each drained batch."""
    dep.engine.create_account(Account("acme", "USD"))
    dep.engine.credit("seed", "acme", 1000, "USD")
    with dep.ledger.transaction(write=True) as conn:
        assert sql_outbox.set_alert(conn, "acme", 500)
        assert not sql_outbox.set_alert(conn, "nobody", 500)
    dep.engine.debit("d1", "acme", 400)
    drain_all(dep)
    assert outbox(dep.ledger, "balance.low") == []  # 600: not below 500
    dep.engine.debit("d2", "acme", 200)
    dep.engine.debit("d3", "acme", 100)
    drain_all(dep)
    dep.engine.debit("d4", "acme", 100)
    drain_all(dep)
    lows = outbox(dep.ledger, "balance.low")
    assert [data_of(e) for e in lows] == [
        {"account_id": "acme", "balance_minor": 300, "threshold_minor": 500}
    ]
    dep.engine.credit("top", "acme", 1000, "USD")  # back above: re-armed
    drain_all(dep)
    dep.engine.debit("d5", "acme", 900)
    drain_all(dep)
    assert [data_of(e)["balance_minor"] for e in outbox(dep.ledger, "balance.low")] == [300, 300]


def test_balance_low_rolls_back_with_the_drained_lines(dep: Deployment) -> None:
    """The crossing is detected in the drain's transaction: when that transaction fails, the
    event is not there either, and the next drain (which applies the lines) emits it once."""
    dep.engine.create_account(Account("acme", "USD"))
    dep.engine.credit("seed", "acme", 1000, "USD")
    with dep.ledger.transaction(write=True) as conn:
        sql_outbox.set_alert(conn, "acme", 500)
    dep.engine.debit("d1", "acme", 900)
    from tally.sync.drainer import Drainer

    drainer = Drainer(dep.client, dep.layout, dep.ledger)
    real = dep.ledger.apply_batch

    def crashing(batch, *, before_commit=None):  # type: ignore[no-untyped-def]
        def boom() -> None:
            assert len(outbox(dep.ledger, "balance.low")) == 0  # not visible outside yet
            raise Boom

        return real(batch, before_commit=boom)

    dep.ledger.apply_batch = crashing  # type: ignore[method-assign]
    with pytest.raises(Boom):
        for _ in range(10):
            drainer.run_once()
    assert outbox(dep.ledger, "balance.low") == []
    dep.ledger.apply_batch = real  # type: ignore[method-assign]
    drain_all(dep)
    assert len(outbox(dep.ledger, "balance.low")) == 1
