"""A hypothesis state machine drives debits, top-ups, worker crashes (at every recovery point and
inside the reinstatement), gateway faults (outage, timeout after commit, declines), store faults
(down, a failover that replaces the store's client) and accounts being closed, and checks DESIGN
invariants 4, 5 and 7 after every step; at the end everything heals and every charge must have
exactly one credit, or (its account closed meanwhile) exactly one refund."""

from __future__ import annotations

import contextlib
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tally.billing import recharge
from tally.billing.engine import Engine
from tally.billing.recharge import FollowingHealth, Recharging, StaticHealth
from tally.billing.recharge.saga import refund_key
from tally.domain.accounts import Account, AccountStatus
from tally.domain.recharge import FUNDING_DECLINE_REASONS, RechargePhase, RechargeRule
from tally.errors import StoreError, StoreUnavailable
from tally.gateway import FakeGateway
from tally.ledger import sql_accounts
from tally.ledger.schema import account_events, credit_intents, recharges
from tally.ledger.sql_ledger import SqlLedger
from tally.store.fake import FakeStore

from .conftest import Crash, Faults

ACCOUNTS = ("a1", "a2")
CARDS = {"a1": "card_a1", "a2": "card_a2"}
POINTS = (
    "after_intent",
    "before_charge",
    "after_charge",
    "after_credit",
    "after_success",
    "before_finish",
    "after_close",
    "inside_success",  # inside the success + reinstatement transaction
)
IN_FLIGHT = {
    RechargePhase.intent,
    RechargePhase.charge_unknown,
    RechargePhase.charged,
    RechargePhase.credited,
}
SETTLE_ROUNDS_MAX = 30


class Node:
    """What the store's client talks to; a failover demotes it and the store gets a new one."""

    def __init__(self) -> None:
        self.role = "master"


class FlakyStore(FakeStore):
    down = False

    def __init__(self) -> None:
        super().__init__()
        self.client = Node()

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("fake store down")
        super()._check()


def node_health(store: FlakyStore) -> StaticHealth:
    """What ``RedisHealth`` would say of the store's CURRENT node."""
    reasons = ("store_down: test",) if store.down else ()
    if store.client.role != "master":
        reasons += (f"store_not_primary: role {store.client.role}",)
    return StaticHealth(reasons)


class RechargeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = SqlLedger.open("sqlite://")
        self.store = FlakyStore()
        self.engine = Engine(self.store, self.ledger)
        self.gateway = FakeGateway()
        # As bootstrap.recharging wires it: the probe follows the store's current client.
        self.health = FollowingHealth(lambda: node_health(self.store))
        self.fault = Faults()
        self.wiring: Recharging = recharge.build(
            self.engine, self.gateway, self.health, fault=self.fault
        )
        self.seq = 0
        self.retries: list[Any] = []  # what callers told of an error run again, once healed
        for aid in ACCOUNTS:
            self.engine.create_account(Account(aid, "USD"))
            self.engine.credit(f"seed-{aid}", aid, 600, "USD")
            declines_max = 1 if aid == "a2" else 2  # a2 has no grace: suspensions are reachable
            rule = RechargeRule(aid, CARDS[aid], 500, 50_000, declines_max, target_minor=1500)
            self.wiring.service.set_rule(rule)

    def teardown(self) -> None:
        self.gateway.close()
        self.ledger.close()

    def _id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}{self.seq}"

    # -- what happens ----------------------------------------------------------------------
    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 700))
    def debit(self, account: str, amount: int) -> None:
        try:
            result = self.engine.debit(self._id("u"), account, amount)
        except StoreError:
            return
        if result.recharge_id is not None:
            self.wiring.service.notice(account, amount, result, drive=False)

    @rule(
        account=st.sampled_from(ACCOUNTS),
        amount=st.integers(1, 700),
        crash_at=st.none() | st.sampled_from(POINTS),
    )
    def debit_then_complete(self, account: str, amount: int, crash_at: str | None) -> None:
        self.debit(account, amount)
        self.complete(crash_at)

    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 3000))
    def top_up(self, account: str, amount: int) -> None:
        self.top_up_with_id(self._id("t"), account, amount)

    def top_up_with_id(self, tid: str, account: str, amount: int) -> None:
        try:
            self.wiring.service.top_up(tid, account, amount, "USD")
        except (Crash, StoreError):  # the client retries the same top-up later
            self.retries.append(lambda: self.top_up_with_id(tid, account, amount))

    @rule(crash_at=st.none() | st.sampled_from(POINTS))
    def complete(self, crash_at: str | None) -> None:
        self.fault.point = crash_at
        with contextlib.suppress(Crash):
            self.wiring.completer.run_once(20)
        self.fault.point = None

    @rule()
    def store_goes_down_or_up(self) -> None:
        self.store.down = not self.store.down

    @rule()
    def sentinel_fails_over(self) -> None:
        """The old primary is demoted and the store's client replaced (nothing is lost here:
        the fake has one dataset)."""
        self.store.client.role = "replica"
        self.store.client = Node()

    @rule(account=st.sampled_from(ACCOUNTS))
    def account_is_closed(self, account: str) -> None:
        try:
            self.engine.set_status(account, AccountStatus.closed)
        except StoreError:  # SQL has it; the operator is told and runs it again later
            self.retries.append(lambda: self.engine.set_status(account, AccountStatus.closed))

    @rule()
    def a2s_card_is_declined_on_its_next_recharge(self) -> None:
        """A genuine funding failure (a2 has no grace): makes suspensions, and so
        reinstatements, reachable in a few steps."""
        rates = self.gateway.faults.card_decline_rates
        self.gateway.set_faults(card_decline_rates={**rates, CARDS["a2"]: 1.0})
        self.debit_then_complete("a2", 600, None)
        self.gateway.set_faults(card_decline_rates=rates)

    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 3000))
    def top_up_crashes_inside_the_reinstatement(self, account: str, amount: int) -> None:
        """The worker dies while the status change of a reinstatement is being written."""
        real = sql_accounts.set_status

        def crash(conn: Any, account_id: str, status: AccountStatus) -> Any:
            if status is AccountStatus.active:
                raise Crash("inside the reinstatement")
            return real(conn, account_id, status)

        tid = self._id("t")
        sql_accounts.set_status = crash  # type: ignore[assignment]
        try:
            self.top_up_with_id(tid, account, amount)
        finally:
            sql_accounts.set_status = real

    @rule(fault=st.sampled_from(["outage", "timeout_after_commit", "declines"]))
    def gateway_fault_toggles(self, fault: str) -> None:
        f = self.gateway.faults
        if fault == "outage":
            self.gateway.set_faults(outage=not f.outage)
        elif fault == "timeout_after_commit":
            self.gateway.set_faults(timeout_after_commit=0.0 if f.timeout_after_commit else 1.0)
        else:
            rates = {} if f.card_decline_rates else dict.fromkeys(CARDS.values(), 1.0)
            self.gateway.set_faults(card_decline_rates=rates)

    # -- what must always hold -------------------------------------------------------------
    def _rows(self, table: sa.Table) -> list[Any]:
        with self.ledger.transaction() as conn:
            return list(conn.execute(sa.select(table)))

    @invariant()
    def inv4_the_card_is_charged_only_after_its_intent_is_durable_and_one_per_account(self) -> None:
        rows = {r.id: r for r in self._rows(recharges)}
        for rec in self.gateway.records():
            if rec.kind != "charge":
                continue
            rc = rows.get(rec.idempotency_key)  # the key is always a recharge id: no fresh keys
            assert rc is not None, f"charge {rec.id} under unknown key {rec.idempotency_key}"
            assert rc.phase != RechargePhase.opened.value
            assert (rc.amount_minor, rc.card_id) == (rec.amount_minor, rec.card)
        for aid in ACCOUNTS:
            flying = [
                r
                for r in rows.values()
                if r.account_id == aid
                and r.finished_at_ms is None
                and RechargePhase(r.phase) in IN_FLIGHT
            ]
            assert len(flying) <= 1

    @invariant()
    def inv4_5_money_in_is_ledger_first_and_each_charge_has_at_most_one_credit(self) -> None:
        intents = {r.id: r for r in self._rows(credit_intents)}
        charged = {
            r.idempotency_key: r
            for r in self.gateway.records()
            if r.kind == "charge" and r.status == "succeeded"
        }
        for tid, record in self.store.books.records.items():
            if record.kind == "c" and tid.startswith("rc-"):
                assert tid in intents  # in SQL before Redis
        for tid, intent in intents.items():
            if tid.startswith("rc-"):
                assert tid in charged, f"credit {tid} without a succeeded charge"
                assert intent.amount_minor == charged[tid].amount_minor
        for rc in self._rows(recharges):
            if rc.phase in (RechargePhase.credited.value, RechargePhase.succeeded.value):
                assert rc.id in intents

    @invariant()
    def inv4_11_a_reinstatement_is_written_whole(self) -> None:
        """The ``reinstated`` event and the status change commit together or not at all."""
        events = self._rows(account_events)
        for aid in ACCOUNTS:
            mine = [e for e in events if e.account_id == aid]
            account = self.ledger.get_account(aid)
            assert account is not None
            if mine and mine[-1].action == "reinstated":
                assert account.status is not AccountStatus.suspended, (aid, mine[-1])

    @invariant()
    def inv5_a_refund_is_only_for_a_charge_whose_credit_was_refused(self) -> None:
        charges = {
            r.idempotency_key: r
            for r in self.gateway.records()
            if r.kind == "charge" and r.status == "succeeded"
        }
        refunds = [r for r in self.gateway.records() if r.kind == "refund"]
        assert len({r.idempotency_key for r in refunds}) == len(refunds)  # once per key
        for refund in refunds:
            rid = refund.idempotency_key.removesuffix("-refund")
            assert refund.idempotency_key == refund_key(rid) and rid in charges
            assert refund.charge_id == charges[rid].id
            credit = self.store.books.records.get(rid)
            assert credit is not None and not credit.result.is_success

    @invariant()
    def inv7_only_a_genuine_funding_decline_suspends(self) -> None:
        declines = {
            r.idempotency_key: r.reason
            for r in self.gateway.records()
            if r.kind == "charge" and r.status == "declined"
        }
        events = self._rows(account_events)
        for aid in ACCOUNTS:
            account = self.ledger.get_account(aid)
            assert account is not None
            mine = [e for e in events if e.account_id == aid]
            if account.status is AccountStatus.suspended:
                assert mine and mine[-1].action == "suspended"
        for event in events:
            if event.action == "suspended":
                assert event.cause == "funding_failure"
                assert declines.get(event.recharge_id) in FUNDING_DECLINE_REASONS

    @rule()
    def everything_heals_and_every_charge_is_credited_exactly_once(self) -> None:
        self.store.down = False
        self.gateway.set_faults(outage=False, timeout_after_commit=0.0, card_decline_rates={})
        self.wiring.gate.circuit.success()
        pending, self.retries = self.retries, []
        for retry in pending:
            retry()
        for _ in range(SETTLE_ROUNDS_MAX):
            if not self.wiring.saga.book.unfinished(limit=100):
                break
            self.wiring.completer.run_once(100)
        assert self.wiring.saga.book.unfinished(limit=100) == []
        refunded = {r.charge_id for r in self.gateway.records() if r.kind == "refund"}
        for rec in self.gateway.records():
            if rec.kind == "charge" and rec.status == "succeeded":
                credit = self.store.books.records.get(rec.idempotency_key)
                assert credit is not None and credit.kind == "c"
                assert credit.result.is_success != (rec.id in refunded), rec
        for aid in ACCOUNTS:  # Redis mirrors every status the ledger decided
            account = self.ledger.get_account(aid)
            book = self.store.books.accounts.get(aid)
            assert account is not None and book is not None
            assert book.status is account.status, (aid, book.status, account.status)


def test_debits_and_faults_never_break_invariants_4_5_and_7() -> None:
    run_state_machine_as_test(
        RechargeMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
