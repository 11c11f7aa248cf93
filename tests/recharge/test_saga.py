"""The recharge saga on a real deployment: one debit opens one recharge; the card is charged
once and the balance credited once, whatever stops it on the way."""

from __future__ import annotations

import pytest

from tally.bootstrap import Deployment
from tally.domain.recharge import RechargePhase
from tally.gateway import FakeGateway

from .conftest import Crash, Faults, balance, complete_all, drain_all, open_customer, wire


def succeeded_charges(gw: FakeGateway) -> list[str]:
    return [
        r.idempotency_key for r in gw.records() if r.kind == "charge" and r.status == "succeeded"
    ]


def test_the_debit_that_crosses_the_threshold_tops_the_account_up_once(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    r = wire(dep, fake_gateway)
    open_customer(r, dep)
    first = dep.engine.debit("u1", "acme", 600)
    assert first.recharge_id is not None
    assert dep.engine.debit("u2", "acme", 100).recharge_id is None  # one open recharge
    drain_all(dep)  # the journal tells the ledger about the opening
    assert r.saga.book.get(first.recharge_id).phase is RechargePhase.opened  # type: ignore[union-attr]
    complete_all(r)
    done = r.saga.book.get(first.recharge_id)
    assert done is not None and done.phase is RechargePhase.succeeded and done.finished
    assert done.amount_minor == 2000 - 300
    assert succeeded_charges(fake_gateway) == [first.recharge_id]
    assert balance(dep) == 2000
    drain_all(dep)
    assert dep.ledger.balance_of("acme") == 2000
    assert dep.engine.debit("u3", "acme", 1600).recharge_id is not None  # marker closed: next one


RECOVERY_POINTS = [
    "after_intent",
    "before_charge",
    "after_charge",
    "after_credit",
    "after_success",
    "before_finish",
    "after_close",
]


@pytest.mark.parametrize("point", RECOVERY_POINTS)
def test_a_worker_killed_at_any_recovery_point_is_finished_by_the_completer_exactly_once(
    dep: Deployment, fake_gateway: FakeGateway, point: str
) -> None:
    crashing = wire(dep, fake_gateway, fault=Faults(point))
    open_customer(crashing, dep)
    opened = dep.engine.debit("u1", "acme", 600)
    with pytest.raises(Crash):
        crashing.service.notice("acme", 600, opened)  # records the opening, drives, dies
    survivor = wire(dep, fake_gateway)  # a fresh process: the completer
    drain_all(dep)  # the journal's copy of the opening is a no-op now
    complete_all(survivor)
    assert succeeded_charges(fake_gateway) == [opened.recharge_id]
    done = survivor.saga.book.get(opened.recharge_id)  # type: ignore[arg-type]
    assert done is not None and done.phase is RechargePhase.succeeded and done.finished
    assert balance(dep) == 2000  # credited exactly once
    drain_all(dep)
    assert dep.ledger.balance_of("acme") == 2000
    assert dep.client.hget(dep.layout.account_key("acme"), "ro") is None


def test_a_gateway_timeout_after_commit_is_resolved_by_lookup_never_by_a_second_charge(
    dep: Deployment, simulator
) -> None:
    simulator.set_faults(timeout_after_commit=1.0, timeout_mode="drop")
    with simulator.gateway() as gateway:
        r = wire(dep, gateway)
        open_customer(r, dep)
        opened = dep.engine.debit("u1", "acme", 600)
        after = r.service.notice("acme", 600, opened)
        assert after is not None and after.phase is RechargePhase.charge_unknown
        assert not after.finished and after.wait_reason.startswith("gateway_unknown")
        simulator.set_faults(timeout_after_commit=0.0)
        complete_all(r)
    with simulator.admin() as admin:
        records = admin.records()
    charges = [x for x in records if x.kind == "charge"]
    assert [(c.idempotency_key, c.status) for c in charges] == [(opened.recharge_id, "succeeded")]
    assert r.saga.metrics.charges_sent == 1 and r.saga.metrics.lookups >= 1
    assert balance(dep) == 2000


def test_a_rebuilt_store_keeps_the_open_recharge_and_applies_its_credit_once(
    dep: Deployment, fake_gateway: FakeGateway, redis_node
) -> None:
    from tally.sync.rebuild import rebuild

    r = wire(dep, fake_gateway, fault=Faults("after_credit"))
    open_customer(r, dep)
    opened = dep.engine.debit("u1", "acme", 600)
    drain_all(dep)
    with pytest.raises(Crash):
        r.completer.run_once(10)
    drain_all(dep)
    dep.client.flushall()  # F3: the dataset is gone
    rebuild(dep.client, dep.layout, dep.ledger)
    rid = opened.recharge_id
    assert dep.client.hget(dep.layout.account_key("acme"), "ro").decode() == rid
    assert dep.engine.debit("u2", "acme", 10).recharge_id is None  # still open: no second one
    survivor = wire(dep, fake_gateway)
    dep.engine.apply_pending_credits(older_than_ms=0)
    complete_all(survivor)
    assert succeeded_charges(fake_gateway) == [rid]
    assert balance(dep) == 2000 - 10
    drain_all(dep)
    assert dep.ledger.balance_of("acme") == 2000 - 10


def test_an_intent_whose_shortfall_is_gone_from_the_store_is_not_charged(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    """The intent is planned, then (here: a crash right after it; in the lab: a partition with
    a failover) the store the charge would fund no longer shows the shortfall. Nothing has been
    sent, so the recharge is skipped, not charged. Without the re-check the card was charged
    for a balance that was already at 2,300."""
    crashing = wire(dep, fake_gateway, fault=Faults("after_intent"))
    open_customer(crashing, dep)
    opened = dep.engine.debit("u1", "acme", 600)
    with pytest.raises(Crash):
        crashing.service.notice("acme", 600, opened)
    dep.engine.credit("manual-topup", "acme", 1900, "USD")  # the shortfall is gone
    survivor = wire(dep, fake_gateway)
    drain_all(dep)
    complete_all(survivor)
    assert succeeded_charges(fake_gateway) == []
    done = survivor.saga.book.get(opened.recharge_id)  # type: ignore[arg-type]
    assert done is not None and done.phase is RechargePhase.skipped and done.finished
    assert done.outcome_reason == "balance_recovered"
    assert balance(dep) == 2300
