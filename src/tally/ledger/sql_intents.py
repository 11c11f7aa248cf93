"""Credit intents: money in is written to SQL first (pending), settled when its journal line
drains (invariant 4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tally.domain.accounts import SystemAccount
from tally.domain.results import Result
from tally.domain.transfers import Transfer, TransferKind
from tally.errors import InvariantViolation, UsageError
from tally.ledger.models import CreditIntent, IntentState, RecordedIntent
from tally.ledger.schema import credit_intents, transfers
from tally.ledger.sql_accounts import check_page_limit
from tally.ledger.sqlutil import chunks, insert_ignore, now_ms

INTENTS_LIMIT_MAX = 10_000


def _intent(row: Any) -> CreditIntent:
    return CreditIntent(
        id=row.id,
        account_id=row.account_id,
        amount_minor=int(row.amount_minor),
        currency=row.currency,
        source=SystemAccount(row.source),
        state=IntentState(row.state),
        result=None if row.result is None else Result(row.result),
        created_at_ms=int(row.created_at_ms),
        settled_at_ms=None if row.settled_at_ms is None else int(row.settled_at_ms),
    )


def difference(
    stored: tuple[str, str, int, str], wanted: tuple[str, str, int, str]
) -> Result | None:
    """Compare (kind, account, amount, currency); the first difference as a replay code."""
    codes = (
        Result.exists_with_different_kind,
        Result.exists_with_different_account,
        Result.exists_with_different_amount,
        Result.exists_with_different_currency,
    )
    for code, a, b in zip(codes, stored, wanted, strict=True):
        if a != b:
            return code
    return None


def record_credit_intent(
    conn: Connection, transfer: Transfer, source: SystemAccount
) -> RecordedIntent:
    if transfer.kind is not TransferKind.credit:
        raise UsageError(f"a credit intent needs a credit transfer, got {transfer.kind.value}")
    row = {
        "id": transfer.id,
        "account_id": transfer.account_id,
        "amount_minor": transfer.amount_minor,
        "currency": transfer.currency,
        "source": SystemAccount(source).value,
        "state": IntentState.pending.value,
        "created_at_ms": now_ms(),
    }
    wanted = ("credit", transfer.account_id, transfer.amount_minor, transfer.currency)
    existing = get_credit_intent(conn, transfer.id)
    if existing is None:
        # Transfer ids are used once forever: an id already drained as a transfer is taken.
        drained = conn.execute(sa.select(transfers).where(transfers.c.id == transfer.id)).first()
        if drained is not None:
            stored = (drained.kind, drained.account_id, int(drained.amount_minor), drained.currency)
            return RecordedIntent(difference(stored, wanted) or Result.exists, None)
        if insert_ignore(conn, credit_intents, [row], ["id"], returning=credit_intents.c.id):
            return RecordedIntent(Result.ok, get_credit_intent(conn, transfer.id))
        existing = get_credit_intent(conn, transfer.id)  # a concurrent insert won the race
        if existing is None:
            raise InvariantViolation(f"credit intent {transfer.id} conflicted but is not there")
    stored = ("credit", existing.account_id, existing.amount_minor, existing.currency)
    code = difference(stored, wanted)
    if code is None and existing.source is not SystemAccount(source):
        code = Result.exists_with_different_account  # the source is the debited account
    return RecordedIntent(code or Result.exists, existing)


def get_credit_intent(conn: Connection, intent_id: str) -> CreditIntent | None:
    row = conn.execute(sa.select(credit_intents).where(credit_intents.c.id == intent_id)).first()
    return None if row is None else _intent(row)


def pending_intents(conn: Connection, ids: Sequence[str]) -> dict[str, CreditIntent]:
    found: dict[str, CreditIntent] = {}
    for part in chunks(sorted(set(ids))):
        rows = conn.execute(
            sa.select(credit_intents).where(
                credit_intents.c.id.in_(part),
                credit_intents.c.state == IntentState.pending.value,
            )
        )
        found.update({row.id: _intent(row) for row in rows})
    return found


def pending_intents_among(conn: Connection, ids: sa.Select[Any]) -> dict[str, CreditIntent]:
    """Pending intents whose id is one of ``ids`` (a subquery, for batches too big to list)."""
    rows = conn.execute(
        sa.select(credit_intents).where(
            credit_intents.c.id.in_(ids),
            credit_intents.c.state == IntentState.pending.value,
        )
    )
    return {row.id: _intent(row) for row in rows}


def settle(conn: Connection, settlements: dict[str, Result]) -> int:
    return sum(settle_one(conn, tid, result) for tid, result in sorted(settlements.items()))


def settle_one(conn: Connection, intent_id: str, result: Result) -> bool:
    """Settle a pending intent whose outcome is known without a journal line (a conflicting
    replay is not journaled). False when it was not pending (unknown or already settled)."""
    updated = conn.execute(
        sa.update(credit_intents)
        .where(
            credit_intents.c.id == intent_id,
            credit_intents.c.state == IntentState.pending.value,
        )
        .values(state=IntentState.settled.value, result=int(result), settled_at_ms=now_ms())
    )
    return updated.rowcount == 1


def unsettled_credit_intents(
    conn: Connection, *, older_than_ms: int | None, limit: int
) -> list[CreditIntent]:
    """Pending intents, oldest first; ``older_than_ms``: only those created that long ago."""
    query = sa.select(credit_intents).where(credit_intents.c.state == IntentState.pending.value)
    if older_than_ms is not None:
        query = query.where(credit_intents.c.created_at_ms <= now_ms() - older_than_ms)
    query = query.order_by(credit_intents.c.created_at_ms, credit_intents.c.id)
    return [
        _intent(r) for r in conn.execute(query.limit(check_page_limit(limit, INTENTS_LIMIT_MAX)))
    ]


def count_unsettled(conn: Connection) -> int:
    query = (
        sa.select(sa.func.count())
        .select_from(credit_intents)
        .where(credit_intents.c.state == IntentState.pending.value)
    )
    return int(conn.execute(query).scalar_one())
