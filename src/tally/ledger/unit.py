"""A unit of work over the ledger (cosmicpython ``service_layer/unit_of_work.py``): one business
step is one transaction, so a saga phase cannot be half-written by construction.

    with ledger.unit() as uow:
        if uow.record_success(rc):
            uow.set_status(rc.account_id, AccountStatus.active)
            uow.add_event(rc.account_id, "reinstated", "top_up", rc.id)

Everything done through ``uow`` commits together when the block ends normally, and nothing of
it when the block raises (a crash, a bug, a store error raised inside it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from tally.domain.accounts import Account, AccountStatus
from tally.domain.recharge import RechargePhase
from tally.domain.results import Result
from tally.ledger import sql_accounts, sql_outbox, sql_recharge
from tally.ledger.sql_outbox import StoredEvent
from tally.ledger.sql_recharge import AccountEvent, Recharge


class LedgerUnit:
    """The ledger's tables, all on one open write transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- accounts ------------------------------------------------------------------------------
    def get_account(self, account_id: str) -> Account | None:
        return sql_accounts.get_account(self.conn, account_id)

    def set_status(self, account_id: str, status: AccountStatus) -> Result:
        return sql_accounts.set_status(self.conn, account_id, status)

    def add_event(
        self, account_id: str, action: str, cause: str, recharge_id: str | None = None
    ) -> None:
        """The account event and its outbox event (``account.suspended`` / ``reinstated``)."""
        sql_recharge.add_event(self.conn, account_id, action, cause, recharge_id)

    # -- events for dependents -------------------------------------------------------------------
    def emit(
        self,
        type_: str,
        data: Mapping[str, Any],
        *,
        account_id: str | None = None,
        source: str | None = None,
    ) -> StoredEvent:
        """An outbox event in this unit's transaction (see ``tally.ledger.sql_outbox.emit``)."""
        return sql_outbox.emit(self.conn, type_, data, account_id=account_id, source=source)

    def last_event(self, account_id: str) -> AccountEvent | None:
        return sql_recharge.last_event(self.conn, account_id)

    # -- recharges -----------------------------------------------------------------------------
    def recharge(self, recharge_id: str) -> Recharge | None:
        return sql_recharge.get_recharge(self.conn, recharge_id)

    def advance(
        self, recharge_id: str, frm: Sequence[RechargePhase], to: RechargePhase, **values: Any
    ) -> bool:
        return sql_recharge.advance(self.conn, recharge_id, frm, to, **values)

    def record_success(self, rc: Recharge) -> bool:
        return sql_recharge.record_success(self.conn, rc)
