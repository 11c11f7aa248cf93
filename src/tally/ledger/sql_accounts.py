"""Accounts in SQL (the source of truth; the store upserts them into Redis afterwards)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tally.domain.accounts import Account, AccountStatus, SystemAccount, is_system_account_id
from tally.domain.money import check_limit_minor
from tally.domain.results import Result
from tally.errors import UsageError
from tally.ledger.schema import accounts
from tally.ledger.sqlutil import chunks, insert_ignore, now_ms

LIST_LIMIT_MAX = 1000
CUSTOMER = "customer"
SYSTEM = "system"


def _account(row: Any) -> Account:
    return Account(
        id=row.id,
        currency=row.currency,
        credit_limit_minor=int(row.credit_limit_minor),
        status=AccountStatus(row.status),
    )


def ensure_system_accounts(conn: Connection, currencies: Iterable[str]) -> None:
    """System accounts exist once per currency, created the first time a currency is seen."""
    ts = now_ms()
    rows = [
        {
            "id": system.account_id(currency),
            "currency": currency,
            "credit_limit_minor": 0,
            "status": AccountStatus.active.value,
            "kind": SYSTEM,
            "created_at_ms": ts,
            "updated_at_ms": ts,
        }
        for currency in sorted(set(currencies))
        for system in SystemAccount
    ]
    insert_ignore(conn, accounts, rows, ["id"])


def create_account(conn: Connection, account: Account) -> Result:
    ts = now_ms()
    row = {
        "id": account.id,
        "currency": account.currency,
        "credit_limit_minor": account.credit_limit_minor,
        "status": account.status.value,
        "kind": CUSTOMER,
        "created_at_ms": ts,
        "updated_at_ms": ts,
    }
    if insert_ignore(conn, accounts, [row], ["id"], returning=accounts.c.id):
        ensure_system_accounts(conn, [account.currency])
        return Result.ok
    existing = get_account(conn, account.id)
    if existing is None:  # the id is a system account's (cannot happen: ids exclude '@')
        return Result.exists_with_different_kind
    if existing.currency != account.currency:
        return Result.exists_with_different_currency
    if existing.credit_limit_minor != account.credit_limit_minor:
        return Result.exists_with_different_credit_limit
    return Result.exists


def get_account(conn: Connection, account_id: str) -> Account | None:
    row = conn.execute(
        sa.select(accounts).where(accounts.c.id == account_id, accounts.c.kind == CUSTOMER)
    ).first()
    return None if row is None else _account(row)


def get_accounts(conn: Connection, ids: Sequence[str]) -> dict[str, Account]:
    found: dict[str, Account] = {}
    for part in chunks(sorted(set(ids))):
        rows = conn.execute(
            sa.select(accounts).where(accounts.c.id.in_(part), accounts.c.kind == CUSTOMER)
        )
        found.update({row.id: _account(row) for row in rows})
    return found


def _update(conn: Connection, account_id: str, **values: Any) -> Result:
    if is_system_account_id(account_id):
        return Result.account_not_found  # system accounts are not operated on by id
    result = conn.execute(
        sa.update(accounts)
        .where(accounts.c.id == account_id, accounts.c.kind == CUSTOMER)
        .values(updated_at_ms=now_ms(), **values)
    )
    return Result.ok if result.rowcount == 1 else Result.account_not_found


def set_status(conn: Connection, account_id: str, status: AccountStatus) -> Result:
    return _update(conn, account_id, status=AccountStatus(status).value)


def change_status(
    conn: Connection, account_id: str, status: AccountStatus
) -> tuple[Result, AccountStatus | None]:
    """``set_status`` that also says what it changed: (result, the status before) when the
    status changed, (result, None) when it was already ``status`` (a compare-and-set, so two
    concurrent changes cannot both see themselves as the change)."""
    before = get_account(conn, account_id)
    if before is None or before.status is AccountStatus(status):
        return set_status(conn, account_id, status), None
    done = conn.execute(
        sa.update(accounts)
        .where(
            accounts.c.id == account_id,
            accounts.c.kind == CUSTOMER,
            accounts.c.status == before.status.value,
        )
        .values(status=AccountStatus(status).value, updated_at_ms=now_ms())
    )
    if done.rowcount == 1:
        return Result.ok, before.status
    return set_status(conn, account_id, status), None


def set_credit_limit(conn: Connection, account_id: str, limit_minor: int) -> Result:
    return _update(conn, account_id, credit_limit_minor=check_limit_minor(limit_minor))


def check_page_limit(limit: int, maximum: int = LIST_LIMIT_MAX) -> int:
    if type(limit) is not int or not 1 <= limit <= maximum:
        raise UsageError(f"limit must be 1..{maximum}, got {limit!r:.20}")
    return limit


def list_accounts(conn: Connection, *, after: str | None, limit: int) -> list[Account]:
    query = sa.select(accounts).where(accounts.c.kind == CUSTOMER)
    if after is not None:
        query = query.where(accounts.c.id > after)
    query = query.order_by(accounts.c.id).limit(check_page_limit(limit))
    return [_account(row) for row in conn.execute(query)]


def count_accounts(conn: Connection) -> int:
    query = sa.select(sa.func.count()).select_from(accounts).where(accounts.c.kind == CUSTOMER)
    return int(conn.execute(query).scalar_one())
