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
