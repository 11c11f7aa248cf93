"""Legacy billing: the 2013 auto-recharge logic, faithfully. LAB CONTROL ONLY.

It exists so the lab can show the incident happening (INCIDENT-28.md, F5-F7) and so the checker
is shown to fail when it should. Nothing outside ``tally.lab`` may import it (an import-linter
contract enforces that). What it does on every usage event:

1. read the balance straight from Redis (an empty dataset reads as 0: no epoch check);
2. debit the usage; on a write failure, log and go on;
3. if the balance read is below the threshold: charge the card with a FRESH idempotency key
   (a retry is a new charge);
4. on success write the new balance (a credit through the store, not ledger-first); on a write
   failure (read-only, lost store) log and go on: the payment is recorded nowhere;
5. on a decline, suspend the account.

So a read-only or empty store charges the card on every usage event (F5), declines caused by
those repeated charges suspend customers (F6), and payments go missing (F7).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis

from tally.domain.accounts import AccountStatus
from tally.errors import TallyError
from tally.gateway.port import Gateway, OutcomeStatus
from tally.ledger.sql_ledger import SqlLedger
from tally.store.keys import KeyLayout
from tally.store.port import BalanceStore

log = logging.getLogger(__name__)

LEGACY_CAUSE = "legacy_decline"


@dataclass(frozen=True, slots=True)
class LegacyPlan:
    card_id: str
    threshold_minor: int
    recharge_minor: int
    currency: str = "USD"


@dataclass
class LegacyStats:
    usage_events: int = 0
    charges: int = 0
    charges_succeeded: int = 0
    balance_writes_failed: int = 0
    suspensions: int = 0
    errors: list[str] = field(default_factory=list)


class LegacyBilling:
    def __init__(
        self,
        store: BalanceStore,
        client: redis.Redis,
        layout: KeyLayout,
        ledger: SqlLedger,
        gateway: Gateway,
        plans: Mapping[str, LegacyPlan],
    ) -> None:
        self.store, self.client, self.layout = store, client, layout
        self.ledger, self.gateway, self.plans = ledger, gateway, dict(plans)
        self.stats = LegacyStats()

    def _read_balance(self, account_id: str) -> int:
        """2013: a plain read. A missing key (empty dataset) is a zero balance."""
        raw = self.client.hget(self.layout.account_key(account_id), "bal")
        return int(raw) if raw is not None else 0

    def _log(self, message: str) -> None:
        log.warning("legacy billing: %s", message)
        if len(self.stats.errors) < 1000:
            self.stats.errors.append(message)

    def usage(self, event_id: str, account_id: str, amount_minor: int) -> None:
        self.stats.usage_events += 1
        try:
            balance = self._read_balance(account_id)
        except redis.RedisError as exc:
            self._log(f"{event_id}: balance read failed: {exc}")
            return
        try:
            self.store.apply([(event_id, "d", account_id, amount_minor, "")])
        except TallyError as exc:
            self._log(f"{event_id}: usage write failed, going on: {exc}")
        plan = self.plans.get(account_id)
        if plan is not None and balance - amount_minor < plan.threshold_minor:
            self._recharge(account_id, plan)

    def _recharge(self, account_id: str, plan: LegacyPlan) -> None:
        key = f"lg-{uuid.uuid4().hex}"  # a fresh key every time: nothing dedupes a retry
        credit_id = f"lgc-{uuid.uuid4().hex[:24]}"
        self.stats.charges += 1
        meta = {"account": account_id, "transfer_id": credit_id}
        outcome = self.gateway.charge(
            key, plan.card_id, plan.recharge_minor, plan.currency, metadata=meta
        )
        if outcome.status is OutcomeStatus.succeeded:
            self.stats.charges_succeeded += 1
            try:
                self.store.apply([(credit_id, "c", account_id, plan.recharge_minor, "")])
            except TallyError as exc:
                self.stats.balance_writes_failed += 1
                self._log(
                    f"{account_id}: charged {outcome.charge_id} but balance write failed: {exc}"
                )
        elif outcome.status is OutcomeStatus.declined:
            self._suspend(account_id, outcome.reason.value if outcome.reason else "declined")
        else:
            self._log(f"{account_id}: charge outcome unknown, will charge again next time")

    def _suspend(self, account_id: str, reason: str) -> None:
        self.stats.suspensions += 1
        self.ledger.set_status(account_id, AccountStatus.suspended)
        self.ledger.recharges.add_event(account_id, "suspended", LEGACY_CAUSE)
        account = self.ledger.get_account(account_id)
        try:
            if account is not None:
                self.store.upsert_account(account)
        except TallyError as exc:
            self._log(f"{account_id}: suspension ({reason}) not mirrored: {exc}")
