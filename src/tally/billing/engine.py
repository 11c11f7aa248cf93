"""The engine: the service layer every entry point (library, CLI, HTTP API) goes through.

Debits go to the store first (the hot path) and reach the ledger through the journal. Money in
goes to the ledger first (a credit intent), then to the store, idempotently by transfer id
(invariant 4): if the store is down, the credit waits, durable, and ``apply_pending_credits``
applies it once the store is writable again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tally.billing.validate import raw_transfer, raw_transfers
from tally.domain import holds
from tally.domain.accounts import Account, AccountState, AccountStatus, SystemAccount
from tally.domain.ids import check_id
from tally.domain.money import check_amount_minor
from tally.domain.results import Result
from tally.domain.transfers import Transfer, TransferKind, TransferResult
from tally.errors import (
    StoreError,
    StoreLost,
    StoreNotEnoughReplicas,
    StoreReadOnly,
    StoreUnavailable,
)
from tally.ledger.sql_ledger import SqlLedger
from tally.store.port import BalanceStore
from tally.store.redis_store import Applied, RawTransfer, RechargeMarker

T = TypeVar("T")

PENDING_CREDITS_BATCH_MAX = 1000


@dataclass(frozen=True, slots=True)
class CreditOutcome:
    """``result`` is None while the credit is durable in the ledger but not yet applied to the
    store (the store was unavailable): it will be applied, exactly once, when it is back."""

    transfer_id: str
    result: Result | None
    balance_minor: int | None
    replayed: bool = False

    @property
    def pending(self) -> bool:
        return self.result is None


class Engine:
    def __init__(self, store: BalanceStore, ledger: SqlLedger) -> None:
        self.store = store
        self.ledger = ledger

    # -- epoch ---------------------------------------------------------------------------------
    def _guarded(self, action: Callable[[], T]) -> T:
        """Run a store action, and retry it once when ``recover`` says this engine was merely
        behind. Safe: every store write is idempotent by transfer id. Never more than one
        retry."""
        try:
            return action()
        except StoreError as exc:
            if not self.recover(exc):
                raise
        return action()

    def recover(self, exc: StoreError) -> bool:
        """After a failed store action: catch up and say True (retry once) in three cases where
        this engine was merely behind: store_lost while the ledger names a newer epoch (a
        rebuild happened; or a newer epoch of one shard, rebuilt alone on a cluster); READONLY or a broken connection while Sentinel knows a new primary
        (a failover); NOREPLICAS from a primary that Sentinel has already replaced (it was cut
        off, the others failed over). False: report the error. The sync path and the async
        shell both go through here, so their guard is one."""
        if isinstance(exc, StoreLost):
            view = self.ledger.epoch_view()  # a shard rebuilt alone has an epoch of its own
            if view is None:
                return False
            seen = (self.store.epoch_id, self.store.shard_epoch_ids)
            if seen == (view.epoch.epoch_id, view.overrides):
                return False
            self.store.set_epoch(view.epoch.epoch_id, view.overrides)
            return True
        if isinstance(exc, StoreReadOnly | StoreUnavailable):
            return self.store.reconnect()
        if isinstance(exc, StoreNotEnoughReplicas):
            return self.store.reconnect_if_moved()
        return False

    # -- accounts ------------------------------------------------------------------------------
    def create_account(self, account: Account) -> Result:
        """Ledger first, then the store. A replay with the same definition returns ``exists``
        and re-applies the ledger's definition to the store (healing a store that missed it)."""
        result = self.ledger.create_account(account)
        if result in (Result.ok, Result.exists):
            self._mirror(account.id)
        return result

    def set_status(self, account_id: str, status: AccountStatus) -> Result:
        result = self.ledger.set_status(account_id, status)
        if result is Result.ok:
            self._mirror(account_id)
        return result

    def set_credit_limit(self, account_id: str, credit_limit_minor: int) -> Result:
        result = self.ledger.set_credit_limit(account_id, credit_limit_minor)
        if result is Result.ok:
            self._mirror(account_id)
        return result

    def _mirror(self, account_id: str) -> None:
        self.mirror_account(account_id)

    def mirror_account(self, account_id: str) -> None:
        """Write the ledger's definition of the account (status, limit) to the store. Callers
        that changed it in SQL call this until it returns (it raises ``StoreError`` while the
        store is unavailable): the ledger is the record, the store its mirror."""
        stored = self.ledger.get_account(account_id)
        if stored is not None:
            self._guarded(lambda: self.store.upsert_account(stored))

    def recharge_marker(self, account_id: str, op: str, value: str) -> RechargeMarker:
        """The store's auto-recharge marker (``rule`` / ``open`` / ``close``), guarded like every
        other store call of the engine."""
        return self._guarded(lambda: self.store.recharge_marker(account_id, op, value))

    def account(self, account_id: str) -> AccountState | None:
        return self.accounts([account_id])[account_id]

    def accounts(self, account_ids: Iterable[str]) -> dict[str, AccountState | None]:
        ids = list(account_ids)
        return self._guarded(lambda: self.store.read_accounts(ids))

    # -- debits --------------------------------------------------------------------------------
    def debit(
        self,
        transfer_id: str,
        account_id: str,
        amount_minor: int,
        currency: str = "",
        occurred_at_ms: int | None = None,
    ) -> TransferResult:
        """``occurred_at_ms``: when the usage happened (epoch ms); None: now, by the store
        server's clock. A retry more than the idempotency window after the first attempt must
        pass the original one, or it is a new debit (README, "Idempotency window")."""
        raw = raw_transfer("d", transfer_id, account_id, amount_minor, currency, occurred_at_ms)
        return self._guarded(lambda: self.store.apply([raw])).results[0]

    def debit_many(self, items: Iterable[Sequence[object]]) -> Applied:
        """Many debits, one result each, in order; thousands per script call. An item is
        ``(transfer_id, account_id, amount_minor[, currency[, occurred_at_ms]])``."""
        raws = raw_transfers("d", items)
        return self._guarded(lambda: self.store.apply(raws))

    # -- holds (domain.holds): store first, like debits; the journal takes them to the ledger --
    def place_hold(
        self, hold_id: str, account_id: str, amount_minor: int, expires_in_ms: int
    ) -> holds.HoldOutcome:
        """Reserve ``amount_minor`` of the account's available balance for ``expires_in_ms``
        (by the store's clock). Bad input raises a ``UsageError`` before anything is written."""
        holds.check_hold_id(hold_id)
        check_id(account_id, "account id")
        check_amount_minor(amount_minor)
        holds.check_expires_in_ms(expires_in_ms)
        return self._guarded(
            lambda: self.store.place_hold(hold_id, account_id, amount_minor, expires_in_ms)
        )

    def capture_hold(self, hold_id: str, amount_minor: int) -> holds.HoldOutcome:
        holds.check_hold_id(hold_id)
        check_amount_minor(amount_minor)
        return self._guarded(lambda: self.store.capture_hold(hold_id, amount_minor))

    def void_hold(self, hold_id: str) -> holds.HoldOutcome:
        holds.check_hold_id(hold_id)
        return self._guarded(lambda: self.store.void_hold(hold_id))

    def get_hold(self, hold_id: str) -> holds.HoldOutcome:
        holds.check_hold_id(hold_id)
        return self._guarded(lambda: self.store.get_hold(hold_id))

    def sweep_holds(self, limit: int = holds.HOLD_SWEEP_MAX) -> int:
        """One bounded pass of the expiry sweeper over every shard: released holds."""
        return self._guarded(lambda: self.store.sweep_holds(limit))

    # -- credits (money in: ledger first) ------------------------------------------------------
    def credit(
        self,
        transfer_id: str,
        account_id: str,
        amount_minor: int,
        currency: str,
        source: SystemAccount = SystemAccount.adjustments,
        *,
        system: bool = False,
    ) -> CreditOutcome:
        """``system``: tally's own credit (a recharge's), whose id has the reserved form
        (domain/ids.py); a caller's credit must not take such an id."""
        prepared = self.credit_intent(
            transfer_id, account_id, amount_minor, currency, source, system=system
        )
        if isinstance(prepared, CreditOutcome):
            return prepared
        try:
            result = self._guarded(lambda: self.store.apply([prepared])).results[0]
        except StoreError:
            return CreditOutcome(transfer_id, None, None)
        return self.credit_applied(result)

    # A credit in two halves around its store step, so that the HTTP path can send that step
    # through its coalescer (``service.fast_debit``) while the ledger-first rule stays here:
    # ``credit_intent`` (SQL) always runs first, ``credit_applied`` after the store answered.
    def credit_intent(
        self,
        transfer_id: str,
        account_id: str,
        amount_minor: int,
        currency: str,
        source: SystemAccount = SystemAccount.adjustments,
        *,
        system: bool = False,
    ) -> CreditOutcome | RawTransfer:
        """Validate and record the credit's intent in the ledger. A conflicting replay is
        answered here (a ``CreditOutcome``); otherwise the store step to apply (a
        ``RawTransfer``): a store error on it means the credit is pending, never lost."""
        raw_transfer("c", transfer_id, account_id, amount_minor, currency, system=system)
        transfer = Transfer(transfer_id, TransferKind.credit, account_id, amount_minor, currency)
        recorded = self.ledger.record_credit_intent(transfer, source)
        if recorded.conflict is not None:
            return CreditOutcome(transfer_id, recorded.conflict, None, replayed=True)
        # The credit occurred when its intent was first recorded (the ledger keeps intents
        # forever): a retry after the window is refused by the age guard, never applied again.
        # No intent but no conflict: the id was drained as a transfer long ago. 0 (1970) lets
        # the store replay its record if it still has it and refuse it otherwise.
        occurred = 0 if recorded.intent is None else recorded.intent.created_at_ms
        return raw_transfer(
            "c", transfer_id, account_id, amount_minor, currency, occurred, system=system
        )

    def credit_applied(self, result: TransferResult) -> CreditOutcome:
        """The outcome of a credit whose store step answered ``result``. Writes to the ledger
        only for a conflicting replay (``credit_needs_settling``)."""
        self._settle_if_refused_by_id(result)
        return CreditOutcome(
            result.transfer_id, result.result, result.balance_minor, result.replayed
        )

    @staticmethod
    def credit_needs_settling(result: TransferResult) -> bool:
        """Whether ``credit_applied`` does I/O for this result (an async caller hops to a
        thread only then)."""
        return result.result.is_replay_conflict

    def apply_pending_credits(
        self, *, older_than_ms: int = 1000, limit: int = PENDING_CREDITS_BATCH_MAX
    ) -> int:
        """Re-apply credit intents the journal has not yet settled (the store was down, or lost
        and rebuilt). Idempotent by transfer id: an applied one replays, a lost one applies."""
        intents = self.ledger.unsettled_credit_intents(
            older_than_ms=older_than_ms, limit=min(limit, PENDING_CREDITS_BATCH_MAX)
        )
        if not intents:
            return 0
        raws: list[RawTransfer] = [
            (i.id, "c", i.account_id, i.amount_minor, i.currency, i.created_at_ms) for i in intents
        ]
        applied = self._guarded(lambda: self.store.apply(raws))
        for result in applied.results:
            self._settle_if_refused_by_id(result)
        return len(intents)

    def _settle_if_refused_by_id(self, result: TransferResult) -> None:
        """A conflicting replay is not journaled (nothing changed), so settle it here."""
        if self.credit_needs_settling(result):
            self.ledger.settle_credit_intent(result.transfer_id, result.result)
