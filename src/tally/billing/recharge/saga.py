"""The recharge saga: phases with recovery points, one local SQL transaction each, and ONE loop
(``drive``) that holds all the branching (brandur's rocket-rides-atomic ``api.rb``).

    opened          -> read rule, balance, today's spending; write the intent (amount, card) and
                       take the account's one in-flight slot                     [after_intent]
    intent          -> count the attempt; charge the card with key = recharge id  [before_charge,
                       after_charge]; record the outcome
    charge_unknown  -> lookup(key); only when the gateway has no record of the key is the SAME
                       request re-sent under the SAME key (idempotent: never a second charge)
    charged         -> ``Engine.credit(recharge id, ..., card_clearing)``: the credit intent is
                       durable in SQL, then applied to Redis idempotently         [after_credit]
    credited        -> wait until the credit is applied; reinstate a funding suspension; record
                       success                                                    [after_success]
    outcome         -> mirror autopay/suspension to Redis, close the Redis marker, finish
                                                                                  [after_close]

Any step may stop (crash, store or gateway down): the completer re-drives from the last recovery
point, and every step is idempotent from there. The gateway is called only after the intent
is durable (invariant 4) and only while the gate is open (invariant 8).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tally.billing.engine import CreditOutcome, Engine
from tally.billing.recharge.health import Gate, GateMetrics
from tally.domain.accounts import AccountStatus, SystemAccount
from tally.domain.invariant import invariant
from tally.domain.recharge import RechargePhase, SkipReason, after_decline, plan_recharge
from tally.domain.results import Result
from tally.errors import InfrastructureError, StoreError
from tally.gateway.errors import GatewayError
from tally.gateway.port import ChargeOutcome, Gateway, OutcomeStatus
from tally.ledger.sql_recharge import Recharge, RechargeLedger
from tally.ledger.unit import LedgerUnit

log = logging.getLogger(__name__)

#: Steps one ``drive`` may take: the longest path is 6 phases plus a re-send; more is a bug.
STEPS_MAX = 12
FUNDING_CAUSE = "funding_failure"
Fault = Callable[[str], None]
P = RechargePhase


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


class RechargeSaga:
    def __init__(
        self,
        engine: Engine,
        gateway: Gateway,
        gate: Gate,
        *,
        metrics: GateMetrics | None = None,
        fault: Fault | None = None,
    ) -> None:
        self.engine, self.gateway, self.gate = engine, gateway, gate
        self.book: RechargeLedger = engine.ledger.recharges
        self.metrics = metrics or GateMetrics()
        self.fault = fault

    def _hook(self, point: str) -> None:
        if self.fault is not None:
            self.fault(point)

    # -- the one loop --------------------------------------------------------------------------
    def drive(self, recharge_id: str) -> Recharge | None:
        """Take the recharge as far as it can go now. Returns its last stored state."""
        for _ in range(STEPS_MAX):
            rc = self.book.get(recharge_id)
            if rc is None or rc.finished:
                return rc
            try:
                wait = self._step(rc)
            except (StoreError, GatewayError) as exc:
                wait = Wait(f"{type(exc).__name__}: {exc}")
            if wait is not None:
                self.book.note(rc.id, wait_reason=wait.reason[:80], error=wait.reason)
                self.metrics.waited(rc.id, wait.reason)
                return self.book.get(recharge_id)
        invariant(False, f"recharge {recharge_id} made no progress in {STEPS_MAX} steps")
        return None

    def _step(self, rc: Recharge) -> Wait | None:
        if rc.phase is P.opened:
            return self._plan(rc)
        if rc.phase is P.intent:
            return self._charge(rc)
        if rc.phase is P.charge_unknown:
            return self._resolve(rc)
        if rc.phase is P.charged:
            return self._credit(rc)
        if rc.phase is P.credited:
            return self._settle(rc)
        return self._close(rc)

    # -- opened -> intent | skipped ------------------------------------------------------------
    def _plan(self, rc: Recharge) -> Wait | None:
        stored = self.book.get_rule(rc.account_id)
        if stored is None or not stored.autopay_enabled:
            reason = "no_rule" if stored is None else "autopay_disabled"
            self.book.advance(rc.id, [P.opened], P.skipped, outcome_reason=reason)
            return None
        blocked = self.gate.why_not(rc.account_id)
        if blocked is not None:
            return Wait(blocked)
        state = self.engine.account(rc.account_id)
        if state is None:
            self.book.advance(rc.id, [P.opened], P.skipped, outcome_reason="no_account")
            return None
        if self._cannot_take_credit(rc, P.opened):
            return None
        spent = self.book.spent_today(rc.account_id, exclude=rc.id)
        # holds: thresholds look at the available balance (balance - open holds), as the Lua
        # step that opened this recharge did; the credit limit is not money to top up from
        available = state.balance_minor - state.held_minor
        plan = plan_recharge(stored.rule, stored.autopay_enabled, available, spent)
        if plan.skip is not None:
            self.book.advance(rc.id, [P.opened], P.skipped, outcome_reason=plan.skip.value)
            return None
        if plan.wait is not None:
            return Wait(plan.wait)
        if not self.book.claim(rc, stored.rule.card_id, plan.amount_minor):
            return Wait("in_flight: another recharge of this account is being driven")
        self._hook("after_intent")
        return None

    # -- intent -> charged | declined | charge_unknown -----------------------------------------
    def _charge(self, rc: Recharge) -> Wait | None:
        if rc.attempts > 0:  # a request may have gone out before a crash: ask first
            found = self._lookup(rc)
            if isinstance(found, Wait):
                return found
            if found is not None:
                return self._record(rc, found, P.intent)
        elif self._cannot_take_credit(rc, P.intent) or self._shortfall_gone(rc):
            return None
        return self._send(rc, P.intent)

    def _cannot_take_credit(self, rc: Recharge, frm: RechargePhase) -> bool:
        """Nothing charged yet and the account could not take the credit (closed, e.g. while
        the recharge waited at the freeze gate): skip it; the close releases the slot. Only
        before any request went out: an in-flight charge is resolved, then refunded."""
        account = self.engine.ledger.get_account(rc.account_id)
        if account is not None and account.status is not AccountStatus.closed:
            return False
        self.book.advance(rc.id, [frm], P.skipped, outcome_reason="account_closed")
        return True

    def _shortfall_gone(self, rc: Recharge) -> bool:
        """Nothing sent yet: does the store the charge would fund still show the shortfall?
        The intent was planned against the store as it was; a failover in between can take the
        debits that caused it away with the old primary (lab, primary-dc-partition: the intent
        waited at the gate through the partition, then charged a card for a shortfall the new
        primary never had). Only a recovered balance cancels; gate first, so a sick store is
        never read as "recovered"."""
        if self.gate.why_not(rc.account_id) is not None:
            return False  # _send waits on the gate
        stored = self.book.get_rule(rc.account_id)
        state = self.engine.account(rc.account_id)
        if stored is None or state is None:
            return False
        spent = self.book.spent_today(rc.account_id, exclude=rc.id)
        plan = plan_recharge(stored.rule, True, state.balance_minor - state.held_minor, spent)
        if plan.skip is not SkipReason.balance_recovered:
            return False
        # Compare-and-set: if another worker moved it meanwhile, that worker drives it on.
        self.book.advance(rc.id, [P.intent], P.skipped, outcome_reason=plan.skip.value)
        return True

    def _send(self, rc: Recharge, frm: RechargePhase) -> Wait | None:
        blocked = self.gate.why_not(rc.account_id)
        if blocked is not None:
            return Wait(blocked)
        invariant(rc.card_id is not None and rc.amount_minor is not None, "intent without amount")
        assert rc.card_id is not None and rc.amount_minor is not None
        self.book.note(rc.id, attempt=True)
        self._hook("before_charge")
        self.metrics.charges_sent += 1
        meta = {"account": rc.account_id, "recharge": rc.id, "transfer_id": rc.id}
        outcome = self.gateway.charge(
            rc.id, rc.card_id, rc.amount_minor, rc.currency, metadata=meta
        )
        self._hook("after_charge")
        return self._record(rc, outcome, frm)

    def _lookup(self, rc: Recharge) -> ChargeOutcome | Wait | None:
        """A read at the gateway: safe while frozen or while the store is sick, but not while
        the circuit is open (the gateway itself is failing)."""
        blocked = self.gate.circuit.blocked()
        if blocked is not None:
            return Wait(blocked)
        self.metrics.lookups += 1
        try:
            found = self.gateway.lookup(rc.id)
        except GatewayError as exc:
            self.gate.circuit.failure()
            return Wait(f"gateway_unavailable: {exc}")
        return found if found is not None and found.is_final else None

    def _resolve(self, rc: Recharge) -> Wait | None:
        """An unknown outcome: lookup with the same key. Only if the gateway has no record of
        the key at all is the same request sent again, under the same key."""
        found = self._lookup(rc)
        if isinstance(found, Wait):
            return found
        if found is not None:
            return self._record(rc, found, P.charge_unknown)
        return self._send(rc, P.charge_unknown)

    def _record(self, rc: Recharge, outcome: ChargeOutcome, frm: RechargePhase) -> Wait | None:
        invariant(outcome.idempotency_key == rc.id, "gateway answered for another key")
        if outcome.status is OutcomeStatus.unknown:
            self.gate.circuit.failure()
            if frm is not P.charge_unknown:
                self.book.advance(rc.id, [frm], P.charge_unknown)
            return Wait(f"gateway_unknown: {outcome.detail}")
        self.gate.circuit.success()
        if outcome.status is OutcomeStatus.succeeded:
            self.book.advance(rc.id, [frm], P.charged, charge_id=outcome.charge_id)
            return None
        return self._declined(rc, outcome.reason.value if outcome.reason else "other", frm)

    def _declined(self, rc: Recharge, reason: str, frm: RechargePhase) -> Wait | None:
        stored = self.book.get_rule(rc.account_id)
        invariant(stored is not None, f"recharge {rc.id} charged without a rule")
        assert stored is not None
        try:
            state = self.engine.account(rc.account_id)
            balance = None if state is None else state.balance_minor
        except StoreError:
            balance = None  # unreadable store: never a reason to suspend
        decision = after_decline(stored.rule, stored.consecutive_declines, reason, balance)
        suspend = decision.suspend and self._active(rc.account_id)
        self.book.record_decline(
            rc,
            reason,
            decision.consecutive_declines,
            decision.disable_autopay,
            frm,
            suspend=suspend,
        )
        return None

    def _active(self, account_id: str) -> bool:
        account = self.engine.ledger.get_account(account_id)
        return account is not None and account.status is AccountStatus.active

    # -- charged -> credited -> succeeded ------------------------------------------------------
    def _credit(self, rc: Recharge) -> Wait | None:
        out = self._apply_credit(rc)  # the intent is durable now; Redis may still be down
        if out.result is not None and not out.result.is_success:
            return self._refund(rc, out.result, P.charged)
        self.book.advance(rc.id, [P.charged], P.credited)
        self._hook("after_credit")
        return None

    def _apply_credit(self, rc: Recharge) -> CreditOutcome:
        assert rc.amount_minor is not None
        out = self.engine.credit(
            rc.id,
            rc.account_id,
            rc.amount_minor,
            rc.currency,
            SystemAccount.card_clearing,
            system=True,
        )
        invariant(
            out.result is None or not out.result.is_replay_conflict,
            f"recharge credit {rc.id} conflicts with another transfer: {out.result}",
        )
        self.metrics.credits += 1
        return out

    def _refund(self, rc: Recharge, refused: Result, frm: RechargePhase) -> Wait | None:
        """The card was charged and the account refused the credit for good (it was closed
        meanwhile): the money goes back to the card, once, under a key derived from the
        recharge, and the outcome says so. Until the gateway confirms, the recharge waits here
        (holding its slot) and every re-drive asks again under the same key."""
        invariant(rc.charge_id is not None, f"recharge {rc.id} charged without a charge id")
        assert rc.charge_id is not None and rc.amount_minor is not None
        blocked = self.gate.circuit.blocked()
        if blocked is not None:
            return Wait(blocked)
        refund = self.gateway.refund(refund_key(rc.id), rc.charge_id, rc.amount_minor)
        if refund.status is not OutcomeStatus.succeeded:
            if refund.status is OutcomeStatus.unknown:
                self.gate.circuit.failure()
            return Wait(f"refund_pending: {refund.status.value} {refund.detail}")
        self.gate.circuit.success()
        self.metrics.refunds += 1
        log.warning("recharge %s: credit refused (%s), charge refunded", rc.id, refused.name)
        self.book.record_refund(rc, [frm], refused.name)  # with its event: all or none
        return None

    def _settle(self, rc: Recharge) -> Wait | None:
        out = self._apply_credit(rc)  # idempotent: a replay when already applied
        if out.result is None:
            return Wait("credit_pending: the store has not applied the credit yet")
        if not out.result.is_success:
            return self._refund(rc, out.result, P.credited)
        # Success, the reinstatement and its event: one transaction (a crash keeps all or none).
        # Redis learns the status in ``_close``, re-driven until the store takes it.
        with self.engine.ledger.unit() as uow:
            reinstated = uow.record_success(rc) and reinstate_funded(uow, rc.account_id, rc.id)
            self._hook("inside_success")
        if reinstated:
            self.metrics.reinstatements += 1
        self._hook("after_success")
        return None

    # -- outcome -> finished -------------------------------------------------------------------
    def _close(self, rc: Recharge) -> Wait | None:
        """Mirror what the outcome changed into Redis, close the marker, finish. Closing only
        after the credit is applied means no debit in between can open a second recharge for a
        shortfall that is being paid."""
        stored = self.book.get_rule(rc.account_id)
        if stored is None or not stored.autopay_enabled:
            self.engine.recharge_marker(rc.account_id, "rule", "")
        # The status the outcome decided in SQL (a suspension, a reinstatement): every re-drive
        # writes it again until the store has it, so a store error never leaves them apart.
        self.engine.mirror_account(rc.account_id)
        self.engine.recharge_marker(rc.account_id, "close", rc.id)
        self._hook("before_finish")
        self.book.finish(rc.id)
        self._hook("after_close")
        return None


def reinstate_funded(uow: LedgerUnit, account_id: str, recharge_id: str | None) -> bool:
    """A successful top-up lifts a suspension for funding failure (and only that one): the
    status and its ``reinstated`` event in the caller's transaction. The store learns it from
    ``Engine.mirror_account`` after the commit."""
    account = uow.get_account(account_id)
    last = uow.last_event(account_id)
    if account is None or account.status is not AccountStatus.suspended:
        return False
    if last is None or last.action != "suspended" or last.cause != FUNDING_CAUSE:
        return False
    uow.set_status(account_id, AccountStatus.active)
    uow.add_event(account_id, "reinstated", "top_up", recharge_id)
    return True


def refund_key(recharge_id: str) -> str:
    """The gateway idempotency key of the refund of a recharge's charge: one per recharge."""
    return f"{recharge_id}-refund"


def drive_safely(saga: RechargeSaga, recharge_id: str) -> Recharge | None:
    """``drive`` for a worker loop: infrastructure errors (the ledger down) are logged; the
    recharge stays where it is and the completer comes back to it."""
    try:
        return saga.drive(recharge_id)
    except InfrastructureError as exc:
        log.warning("recharge %s: %s", recharge_id, exc)
        return None
