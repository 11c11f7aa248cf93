"""Recharge operations for the API and CLI: set a rule (SQL first, then the Redis mirror), learn
of a recharge a debit opened (without waiting for the drainer), top up by card, freeze."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from tally.billing.engine import CreditOutcome, Engine
from tally.billing.recharge.saga import RechargeSaga, reinstate_funded
from tally.domain.accounts import SystemAccount
from tally.domain.recharge import RechargeRule
from tally.domain.results import Result
from tally.domain.transfers import TransferKind, TransferResult
from tally.errors import UsageError
from tally.ledger.models import JournalLine
from tally.ledger.schema import recharges
from tally.ledger.sql_recharge import (
    PAGE_MAX,
    FreezeState,
    Recharge,
    RechargeLedger,
    StoredRule,
    _recharge,
)
from tally.ledger.sqlutil import now_ms


class RechargeService:
    def __init__(self, engine: Engine, saga: RechargeSaga | None = None) -> None:
        self.engine = engine
        self.saga = saga
        self.book: RechargeLedger = engine.ledger.recharges

    # -- rules ---------------------------------------------------------------------------------
    def set_rule(self, rule: RechargeRule) -> Result:
        """SQL first (the source of truth), then the threshold mirrored into the account hash."""
        result = self.book.set_rule(rule)
        if result is Result.ok:
            self.mirror_rule(rule.account_id)
        return result

    def disable_autopay(self, account_id: str, reason: str = "operator") -> bool:
        changed = self.book.set_autopay(account_id, False, reason)
        if changed:
            self.mirror_rule(account_id)
        return changed

    def mirror_rule(self, account_id: str) -> None:
        stored = self.book.get_rule(account_id)
        value = str(stored.rule.threshold_minor) if stored and stored.autopay_enabled else ""
        self.engine.recharge_marker(account_id, "rule", value)

    def rule(self, account_id: str) -> StoredRule | None:
        return self.book.get_rule(account_id)

    def remove_rule(self, account_id: str) -> bool:
        """Autopay off (the rule row stays: its decline count and history are the record)."""
        return self.disable_autopay(account_id, "rule removed")

    # -- reading recharges -----------------------------------------------------------------------
    def get(self, recharge_id: str) -> Recharge | None:
        return self.book.get(recharge_id)

    def page(self, *, account_id: str | None, after: str | None, limit: int) -> list[Recharge]:
        """Recharges in id order (ids sort by opening time), optionally of one account."""
        limit = max(1, min(limit, PAGE_MAX))
        query = sa.select(recharges)
        if account_id is not None:
            query = query.where(recharges.c.account_id == account_id)
        if after is not None:
            query = query.where(recharges.c.id > after)
        query = query.order_by(recharges.c.id).limit(limit)
        with self.engine.ledger.transaction() as conn:
            return [_recharge(row) for row in conn.execute(query)]

    def open_recharge(self, account_id: str) -> Recharge | None:
        """The account's newest unfinished recharge, if any."""
        cols = recharges.c
        query = (
            sa.select(cols.id)
            .where(cols.account_id == account_id, cols.finished_at_ms.is_(None))
            .order_by(cols.opened_at_ms.desc(), cols.id.desc())
            .limit(1)
        )
        with self.engine.ledger.transaction() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else self.book.get(str(found))

    def count_by_phase(self) -> dict[str, tuple[int, int]]:
        """phase -> (all, unfinished): one grouped query, for the metrics scrape."""
        cols = recharges.c
        unfinished = sa.func.sum(sa.case((cols.finished_at_ms.is_(None), 1), else_=0))
        query = sa.select(cols.phase, sa.func.count(), unfinished).group_by(cols.phase)
        with self.engine.ledger.transaction() as conn:
            return {str(p): (int(n), int(u or 0)) for p, n, u in conn.execute(query)}

    # -- openings ------------------------------------------------------------------------------
    def notice(
        self,
        account_id: str,
        debit_amount_minor: int,
        result: TransferResult,
        *,
        drive: bool = True,
    ) -> Recharge | None:
        """Record the recharge a debit opened (the drainer would too: both are idempotent) and,
        with ``drive``, take it as far as it goes now."""
        if result.recharge_id is None:
            return None
        account = self.engine.ledger.get_account(account_id)
        if account is None:
            return None
        line = JournalLine(
            result.transfer_id,
            TransferKind.debit,
            account_id,
            debit_amount_minor,
            account.currency,
            result.result,
            result.balance_minor,
            now_ms(),
            result.recharge_id,
        )
        self.book.record_opening(line)
        if drive and self.saga is not None:
            return self.saga.drive(result.recharge_id)
        return self.book.get(result.recharge_id)

    def notice_many(
        self, items: Sequence[tuple[str, str, int]], results: Sequence[TransferResult]
    ) -> int:
        """``items``: the (transfer id, account id, amount) of a debit batch, in result order."""
        opened = 0
        for (_, account_id, amount), result in zip(items, results, strict=True):
            if result.recharge_id is not None:
                self.notice(account_id, amount, result)
                opened += 1
        return opened

    # -- top-ups -------------------------------------------------------------------------------
    def top_up(
        self, transfer_id: str, account_id: str, amount_minor: int, currency: str
    ) -> CreditOutcome:
        """A card top-up made outside auto-recharge: ledger-first credit, then a suspension for
        funding failure is lifted (reinstate on a successful top-up)."""
        out = self.engine.credit(
            transfer_id, account_id, amount_minor, currency, SystemAccount.card_clearing
        )
        if out.result is not None and out.result.is_success:
            with self.engine.ledger.unit() as uow:  # the status and its event: all or none
                reinstated = reinstate_funded(uow, account_id, None)
            # A store error here leaves Redis behind SQL and reaches the caller, whose retry
            # (same transfer id: a replay) writes the mirror again until it holds.
            if reinstated or out.replayed:
                self.engine.mirror_account(account_id)
        return out

    # -- freeze --------------------------------------------------------------------------------
    def freeze(self, reason: str, actor: str = "operator") -> FreezeState:
        if not reason.strip():
            raise UsageError("a freeze needs a reason")
        return self.book.set_freeze(True, reason, actor)

    def unfreeze(self, reason: str = "resumed", actor: str = "operator") -> FreezeState:
        return self.book.set_freeze(False, reason, actor)

    def freeze_state(self) -> FreezeState:
        return self.book.freeze_state()
