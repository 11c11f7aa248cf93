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

from tally.billing.engine import Engine
from tally.billing.recharge.health import Gate, GateMetrics
from tally.domain.accounts import AccountStatus, SystemAccount
from tally.domain.invariant import invariant
from tally.domain.recharge import RechargePhase, SkipReason, after_decline, plan_recharge
from tally.errors import InfrastructureError, StoreError
from tally.gateway.errors import GatewayError
from tally.gateway.port import ChargeOutcome, Gateway, OutcomeStatus
from tally.ledger.sql_recharge import Recharge, RechargeLedger

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
        blocked = self.gate.why_not()
        if blocked is not None:
            return Wait(blocked)
        state = self.engine.account(rc.account_id)
        if state is None:
            self.book.advance(rc.id, [P.opened], P.skipped, outcome_reason="no_account")
            return None
        spent = self.book.spent_today(rc.account_id, exclude=rc.id)
        plan = plan_recharge(stored.rule, stored.autopay_enabled, state.balance_minor, spent)
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
        elif self._shortfall_gone(rc):
            return None
        return self._send(rc, P.intent)

    def _shortfall_gone(self, rc: Recharge) -> bool:
        """Nothing sent yet: does the store the charge would fund still show the shortfall?
        The intent was planned against the store as it was; a failover in between can take the
        debits that caused it away with the old primary (lab, primary-dc-partition: the intent
        waited at the gate through the partition, then charged a card for a shortfall the new
        primary never had). Only a recovered balance cancels; gate first, so a sick store is
        never read as "recovered"."""
        if self.gate.why_not() is not None:
            return False  # _send waits on the gate
        stored = self.book.get_rule(rc.account_id)
        state = self.engine.account(rc.account_id)
        if stored is None or state is None:
            return False
        spent = self.book.spent_today(rc.account_id, exclude=rc.id)
        plan = plan_recharge(stored.rule, True, state.balance_minor, spent)
        if plan.skip is not SkipReason.balance_recovered:
            return False
        # Compare-and-set: if another worker moved it meanwhile, that worker drives it on.
        self.book.advance(rc.id, [P.intent], P.skipped, outcome_reason=plan.skip.value)
        return True

    def _send(self, rc: Recharge, frm: RechargePhase) -> Wait | None:
        blocked = self.gate.why_not()
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
        self._apply_credit(rc)  # the intent is durable now; Redis may still be down
        self.book.advance(rc.id, [P.charged], P.credited)
        self._hook("after_credit")
        return None

    def _apply_credit(self, rc: Recharge) -> bool:
        assert rc.amount_minor is not None
        out = self.engine.credit(
            rc.id, rc.account_id, rc.amount_minor, rc.currency, SystemAccount.card_clearing
        )
        invariant(
            out.result is None or not out.result.is_replay_conflict,
            f"recharge credit {rc.id} conflicts with another transfer: {out.result}",
        )
        self.metrics.credits += 1
        return out.result is not None and out.result.is_success

    def _settle(self, rc: Recharge) -> Wait | None:
        if not self._apply_credit(rc):  # idempotent: a replay when already applied
            return Wait("credit_pending: the store has not applied the credit yet")
        self._reinstate(rc)
        self.book.record_success(rc)
        self._hook("after_success")
        return None

    def _reinstate(self, rc: Recharge) -> None:
        """A successful top-up lifts a suspension for funding failure (and only that one)."""
        account = self.engine.ledger.get_account(rc.account_id)
        last = self.book.last_event(rc.account_id)
        if account is None or account.status is not AccountStatus.suspended:
            return
        if last is None or last.action != "suspended" or last.cause != FUNDING_CAUSE:
            return
        self.book.add_event(rc.account_id, "reinstated", "top_up", rc.id)
        self.engine.set_status(rc.account_id, AccountStatus.active)
        self.metrics.reinstatements += 1

    # -- outcome -> finished -------------------------------------------------------------------
    def _close(self, rc: Recharge) -> Wait | None:
        """Mirror what the outcome changed into Redis, close the marker, finish. Closing only
        after the credit is applied means no debit in between can open a second recharge for a
        shortfall that is being paid."""
        store = self.engine.store
        stored = self.book.get_rule(rc.account_id)
        if stored is None or not stored.autopay_enabled:
            self.engine._guarded(lambda: store.recharge_marker(rc.account_id, "rule", ""))
        account = self.engine.ledger.get_account(rc.account_id)
        if account is not None and rc.phase is P.declined:
            self.engine.set_status(rc.account_id, account.status)  # mirror a suspension
        self.engine._guarded(lambda: store.recharge_marker(rc.account_id, "close", rc.id))
        self._hook("before_finish")
        self.book.finish(rc.id)
        self._hook("after_close")
        return None


def drive_safely(saga: RechargeSaga, recharge_id: str) -> Recharge | None:
    """``drive`` for a worker loop: infrastructure errors (the ledger down) are logged; the
    recharge stays where it is and the completer comes back to it."""
    try:
        return saga.drive(recharge_id)
    except InfrastructureError as exc:
        log.warning("recharge %s: %s", recharge_id, exc)
        return None
