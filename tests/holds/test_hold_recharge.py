"""Recharge thresholds look at the available balance: a capture (or a debit) that leaves
balance - held below the threshold opens the recharge in the same Lua step, and the saga plans
it against the available balance too (by the posted balance alone it would call the balance
recovered and skip it, while the customer cannot spend)."""

from __future__ import annotations

from tally.bootstrap import Deployment
from tally.domain.holds import HoldCode
from tally.domain.recharge import RechargePhase
from tally.domain.rules import recharge_id_for
from tally.gateway import FakeGateway
from tests.recharge.conftest import complete_all, drain_all, open_customer, wire
from tests.recharge.conftest import fake_gateway as fake_gateway  # the fixture

LONG_MS = 600_000


def test_a_capture_below_the_available_threshold_opens_a_recharge_that_tops_up_available(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    r = wire(dep, fake_gateway)
    open_customer(r, dep, balance_minor=1000, threshold_minor=500, target_minor=2000)
    eng = dep.engine
    assert eng.place_hold("session", "acme", 600, LONG_MS).code is HoldCode.ok
    assert eng.place_hold("small", "acme", 100, LONG_MS).code is HoldCode.ok
    captured = eng.capture_hold("small", 100)  # balance 900, held 600: available 300 < 500
    assert captured.code is HoldCode.ok
    assert captured.capture_id is not None
    assert captured.recharge_id == recharge_id_for(captured.capture_id)
    drain_all(dep)
    complete_all(r)
    done = r.saga.book.get(captured.recharge_id)
    assert done is not None
    assert (done.phase, done.amount_minor) == (RechargePhase.succeeded, 1700)
    state = eng.account("acme")
    assert state is not None
    assert (state.balance_minor, state.held_minor) == (2600, 600)


def test_a_debit_below_the_available_threshold_opens_a_recharge(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    r = wire(dep, fake_gateway)
    open_customer(r, dep, balance_minor=1000, threshold_minor=500, target_minor=2000)
    eng = dep.engine
    assert eng.place_hold("session", "acme", 600, LONG_MS).code is HoldCode.ok
    debit = eng.debit("use-1", "acme", 1)  # balance 999, held 600: available 399 < 500
    assert debit.recharge_id is not None
    drain_all(dep)
    complete_all(r)
    done = r.saga.book.get(debit.recharge_id)
    assert done is not None and done.phase is RechargePhase.succeeded
    assert done.amount_minor == 2000 - 399


def test_a_capture_replayed_after_a_rebuild_names_the_recharge_it_opened(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    """Rebuild restores the capture's recharge id (from ``recharges.opened_by``): the replay is
    the first outcome, whole."""
    from tally.sync.rebuild import rebuild

    r = wire(dep, fake_gateway)
    open_customer(r, dep, balance_minor=1000, threshold_minor=500, target_minor=2000)
    eng = dep.engine
    eng.place_hold("session", "acme", 600, LONG_MS)
    eng.place_hold("small", "acme", 100, LONG_MS)
    first = eng.capture_hold("small", 100)
    assert first.recharge_id is not None
    replay = eng.capture_hold("small", 100)
    drain_all(dep)
    rebuild(dep.client, dep.layout, dep.ledger, force=True)
    assert eng.capture_hold("small", 100) == replay
    assert replay.recharge_id == first.recharge_id
