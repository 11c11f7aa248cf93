"""INCIDENT-28 failure classes F5-F8 on real processes (redis-server, the gateway simulator):
each first with the 2013 legacy billing, showing the damage, then with tally's saga, showing
none."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from tally.bootstrap import Deployment
from tally.cli.main import cli
from tally.config import Settings
from tally.domain.accounts import Account, AccountStatus
from tally.domain.recharge import RechargePhase
from tally.errors import StoreLost, StoreReadOnly
from tally.gateway.client import HttpGateway
from tally.gateway.process import SimulatorProcess
from tally.lab.legacy import LegacyBilling, LegacyPlan
from tally.sync.rebuild import rebuild

from .conftest import CARD, balance, complete_all, drain_all, open_customer, wire

USAGE_EVENTS = 3


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_read_only(dep: Deployment) -> None:
    """F4/F5: the primary comes back as a replica (of a master that is not there): READONLY."""
    dep.client.execute_command("REPLICAOF", "127.0.0.1", dead_port())


def make_writable(dep: Deployment) -> None:
    dep.client.execute_command("REPLICAOF", "NO", "ONE")


def charges(sim: SimulatorProcess, status: str = "succeeded") -> list[str]:
    with sim.admin() as admin:
        return [r.id for r in admin.records() if r.kind == "charge" and r.status == status]


@pytest.fixture
def gateway(simulator: SimulatorProcess) -> Iterator[HttpGateway]:
    with simulator.gateway() as gw:
        yield gw


def legacy(dep: Deployment, gateway: HttpGateway) -> LegacyBilling:
    plans = {"acme": LegacyPlan(CARD, threshold_minor=500, recharge_minor=1000)}
    return LegacyBilling(dep.engine.store, dep.client, dep.layout, dep.ledger, gateway, plans)


def legacy_customer(dep: Deployment) -> None:
    dep.engine.create_account(Account("acme", "USD"))
    dep.engine.credit("seed", "acme", 1000, "USD")
    dep.engine.debit("u0", "acme", 700)  # balance 300: below the threshold of 500


# -- F5: card charged, balance write fails ---------------------------------------------------------
def test_f5_legacy_charges_again_on_every_usage_event_while_the_balance_write_fails(
    dep: Deployment, gateway: HttpGateway, simulator: SimulatorProcess
) -> None:
    legacy_customer(dep)
    billing = legacy(dep, gateway)
    make_read_only(dep)
    for n in range(USAGE_EVENTS):
        billing.usage(f"u{n + 1}", "acme", 10)
    make_writable(dep)
    assert len(charges(simulator)) == USAGE_EVENTS  # one shortfall, charged three times
    assert billing.stats.balance_writes_failed == USAGE_EVENTS
    assert balance(dep) == 300  # and none of the payments reached the balance


def test_f5_tally_charges_once_and_applies_the_credit_when_the_store_is_writable_again(
    dep: Deployment, gateway: HttpGateway, simulator: SimulatorProcess
) -> None:
    def store_turns_read_only(point: str) -> None:
        if point == "after_charge":
            make_read_only(dep)

    r = wire(dep, gateway, fault=store_turns_read_only)
    open_customer(r, dep)
    opened = dep.engine.debit("u1", "acme", 600)
    after = r.service.notice("acme", 600, opened)
    assert after is not None and after.phase is RechargePhase.credited  # in the ledger, not Redis
    assert after.wait_reason.startswith("credit_pending")
    for n in range(USAGE_EVENTS):
        with pytest.raises(StoreReadOnly):
            dep.engine.debit(f"u{n + 2}", "acme", 10)
        r.completer.run_once(10)
    assert len(charges(simulator)) == 1
    make_writable(dep)
    complete_all(r)
    assert charges(simulator) == [r.saga.book.get(opened.recharge_id).charge_id]  # type: ignore[arg-type,union-attr]
    assert balance(dep) == 2000
    drain_all(dep)
    assert dep.ledger.balance_of("acme") == 2000


# -- F6: store unhealthy ------------------------------------------------------------------------
def test_f6_legacy_charges_blind_on_an_empty_store_and_suspends_on_the_issuer_velocity_decline(
    dep: Deployment, gateway: HttpGateway, simulator: SimulatorProcess
) -> None:
    simulator.set_faults(velocity_max_charges=2, velocity_window_s=3600)
    legacy_customer(dep)
    billing = legacy(dep, gateway)
    dep.client.flushall()  # F3: restarted on a missing AOF, the dataset is empty
    for n in range(USAGE_EVENTS):
        billing.usage(f"u{n + 1}", "acme", 10)  # reads balance 0 every time
    assert len(charges(simulator)) == 2
    assert len(charges(simulator, "declined")) == 1
    account = dep.ledger.get_account("acme")
    assert account is not None and account.status is AccountStatus.suspended  # wrongful


def test_f6_tally_waits_while_the_store_is_lost_and_never_suspends_for_a_gateway_outage(
    dep: Deployment, gateway: HttpGateway, simulator: SimulatorProcess
) -> None:
    from tally.billing.recharge import Circuit

    clock = [0.0]
    r = wire(dep, gateway, circuit=Circuit(failures_max=2, cooldown_s=60, clock_s=lambda: clock[0]))
    open_customer(r, dep)
    opened = dep.engine.debit("u1", "acme", 600)
    r.service.notice("acme", 600, opened, drive=False)
    drain_all(dep)
    dep.client.flushall()  # F3 + F6: the store is empty
    for _ in range(3):
        r.completer.run_once(10)
        with pytest.raises(StoreLost):
            dep.engine.debit("u-lost", "acme", 10)
    waiting = r.saga.book.get(opened.recharge_id)  # type: ignore[arg-type]
    assert waiting is not None and waiting.wait_reason.startswith("store_epoch_invalid")
    assert charges(simulator) == [] and r.saga.metrics.charges_sent == 0
    rebuild(dep.client, dep.layout, dep.ledger)
    simulator.set_faults(outage=True)
    for _ in range(4):
        r.completer.run_once(10)
    assert r.saga.metrics.charges_sent == 1  # then the circuit opened: no more calls
    assert r.completer.stats.waiting["circuit_open"] >= 1
    assert dep.ledger.get_account("acme").status is AccountStatus.active  # type: ignore[union-attr]
    simulator.set_faults(outage=False)
    clock[0] += 61  # the cooldown passes: one trial call
    complete_all(r)
    assert len(charges(simulator)) == 1
    assert balance(dep) == 2000
    assert dep.ledger.get_account("acme").status is AccountStatus.active  # type: ignore[union-attr]


def test_f6_a_genuine_decline_suspends_only_after_the_grace_and_a_top_up_reinstates(
    dep: Deployment, gateway: HttpGateway, simulator: SimulatorProcess
) -> None:
    simulator.set_faults(card_decline_rates={CARD: 1.0})
    r = wire(dep, gateway)
    open_customer(r, dep, declines_max=2)
    first = dep.engine.debit("u1", "acme", 600)
    r.service.notice("acme", 600, first)
    assert dep.ledger.get_account("acme").status is AccountStatus.active  # type: ignore[union-attr]
    second = dep.engine.debit("u2", "acme", 10)  # the marker closed after the decline
    r.service.notice("acme", 10, second)
    assert dep.ledger.get_account("acme").status is AccountStatus.suspended  # type: ignore[union-attr]
    assert dep.ledger.recharges.get_rule("acme").autopay_enabled is False  # type: ignore[union-attr]
    assert dep.engine.debit("u3", "acme", 10).result.name == "account_not_active"
    r.service.top_up("topup-1", "acme", 5000, "USD")
    assert dep.ledger.get_account("acme").status is AccountStatus.active  # type: ignore[union-attr]
    assert charges(simulator) == []


# -- F7: remediation ------------------------------------------------------------------------------
def remediate(settings: Settings, simulator: SimulatorProcess, mode: str) -> dict:  # type: ignore[type-arg]
    args = [
        "remediate",
        f"--{mode}",
        "--json",
        "--gateway-url",
        simulator.url,
        "--redis-url",
        settings.require_redis_url(),
        "--ledger-url",
        settings.ledger_url,
        "--home",
        str(settings.home),
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_f7_remediation_credits_the_lost_payment_refunds_duplicates_and_reinstates_once(
    dep: Deployment, gateway: HttpGateway, simulator: SimulatorProcess, settings: Settings
) -> None:
    simulator.set_faults(velocity_max_charges=3, velocity_window_s=3600)
    legacy_customer(dep)
    billing = legacy(dep, gateway)
    make_read_only(dep)
    for n in range(USAGE_EVENTS + 1):
        billing.usage(f"u{n + 1}", "acme", 10)
    make_writable(dep)
    dep.ledger.set_status("acme", AccountStatus.suspended)  # mirrored late: the store was RO
    dry = remediate(settings, simulator, "dry-run")
    assert (dry["charges_without_credit"], dry["duplicate_charges"]) == (1, 2)
    assert dry["wrongful_suspensions"] == 1 and dry["pending_actions"] == 4
    applied = remediate(settings, simulator, "apply")
    assert applied["failures"] == [] and applied["pending_actions"] == 4
    again = remediate(settings, simulator, "apply")
    assert again["actions"] == [] and again["pending_actions"] == 0
    with simulator.admin() as admin:
        refunds = [x for x in admin.records() if x.kind == "refund" and x.status == "succeeded"]
    assert len(refunds) == 2
    assert balance(dep) == 300 + 1000  # the one payment the shortfall needed
    assert dep.ledger.get_account("acme").status is AccountStatus.active  # type: ignore[union-attr]


def test_f7_remediation_finds_nothing_to_fix_after_tally_ran_through_the_same_fault(
    dep: Deployment, gateway: HttpGateway, simulator: SimulatorProcess, settings: Settings
) -> None:
    r = wire(dep, gateway, fault=lambda p: make_read_only(dep) if p == "after_charge" else None)
    open_customer(r, dep)
    opened = dep.engine.debit("u1", "acme", 600)
    r.service.notice("acme", 600, opened)
    make_writable(dep)
    report = remediate(settings, simulator, "dry-run")  # the credit is in the ledger already
    assert report["actions"] == [] and report["charges_seen"] == 1


# -- F8: freeze during mitigation -----------------------------------------------------------------
def test_f8_legacy_has_no_off_switch_and_keeps_charging_during_mitigation(
    dep: Deployment, gateway: HttpGateway, simulator: SimulatorProcess
) -> None:
    legacy_customer(dep)
    billing = legacy(dep, gateway)
    make_read_only(dep)  # operators are restoring the store
    billing.usage("u1", "acme", 10)
    billing.usage("u2", "acme", 10)
    assert len(charges(simulator)) == 2


def test_f8_a_freeze_with_a_reason_stops_every_charge_and_resumes_cleanly(
    dep: Deployment, gateway: HttpGateway, simulator: SimulatorProcess, settings: Settings
) -> None:
    conn = [
        "--redis-url",
        settings.require_redis_url(),
        "--ledger-url",
        settings.ledger_url,
        "--home",
        str(settings.home),
    ]
    runner = CliRunner()
    frozen = runner.invoke(cli, ["freeze", "on", "--reason", "restoring redis", "--json", *conn])
    assert frozen.exit_code == 0 and json.loads(frozen.output)["frozen"] is True
    r = wire(dep, gateway)
    open_customer(r, dep)
    opened = dep.engine.debit("u1", "acme", 600)
    waiting = r.service.notice("acme", 600, opened)
    for _ in range(3):
        r.completer.run_once(10)
    assert waiting is not None and waiting.wait_reason == "frozen: restoring redis"
    assert charges(simulator) == [] and r.completer.stats.waiting["frozen"] == 3
    status = runner.invoke(cli, ["freeze", "status", "--json", *conn])
    assert json.loads(status.output)["reason"] == "restoring redis"
    assert runner.invoke(cli, ["freeze", "off", *conn]).exit_code == 0
    complete_all(r)
    assert len(charges(simulator)) == 1 and balance(dep) == 2000


def test_f7_remediation_leaves_a_charge_whose_saga_is_still_running_to_the_saga(
    dep: Deployment, gateway: HttpGateway, simulator: SimulatorProcess, settings: Settings
) -> None:
    """Seen in CI: remediation on a live deployment judged a charge between the gateway's answer
    and its credit as 'without credit'. The saga (its completer) finishes it."""
    from .conftest import Crash, Faults

    r = wire(dep, gateway, fault=Faults("after_charge"))
    open_customer(r, dep)
    opened = dep.engine.debit("u1", "acme", 600)
    with pytest.raises(Crash):
        r.service.notice("acme", 600, opened)
    assert len(charges(simulator)) == 1  # the card is charged, no credit yet
    report = remediate(settings, simulator, "dry-run")
    assert report["actions"] == [] and report["charges_in_flight"] == 1
    complete_all(r)
    assert balance(dep) == 2000
    after = remediate(settings, simulator, "dry-run")
    assert after["actions"] == [] and after["charges_in_flight"] == 0
