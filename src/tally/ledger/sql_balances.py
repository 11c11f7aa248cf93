"""Balances are never stored: they are sums over ``transfers`` rows with result ok (a customer's
over ``ix_transfers_account_ts``; a system account's, and its transfers page, scan the table)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tally.domain.accounts import is_system_account_id
from tally.domain.results import Result
from tally.domain.transfers import TransferKind
from tally.errors import UsageError
from tally.ledger.models import StreamId, TransferRecord, TransfersPage
from tally.ledger.schema import accounts, journal_conflicts, transfers
from tally.ledger.sql_accounts import check_page_limit
from tally.ledger.sqlutil import chunks

OK = int(Result.ok)
BALANCES_IDS_MAX = 100_000
PAGE_LIMIT_MAX = 1000
SCAN_LIMIT_MAX = 10_000
T = transfers.c


def _signed() -> sa.ColumnElement[Any]:
    """A transfer's effect on its customer side (``account_id``): credits add, debits take."""
    return sa.case((T.kind == TransferKind.credit.value, T.amount_minor), else_=-T.amount_minor)


def _customer_sums(conn: Connection, ids: Sequence[str]) -> dict[str, int]:
    """Customer ids: ``account_id`` is the customer side of every transfer and a customer is
    never a counterparty (those are system accounts), so one grouped sum over
    ix_transfers_account_ts gives the balance."""
    query = (
        sa.select(T.account_id, sa.func.sum(_signed()))
        .where(T.account_id.in_(ids), T.result == OK)
        .group_by(T.account_id)
    )
    return {row[0]: int(row[1]) for row in conn.execute(query)}


def _side_sums(conn: Connection, column: sa.Column[Any], ids: Sequence[str]) -> dict[str, int]:
    """System ids: a scan of ``transfers`` (no index on either side since migration 0007: one
    side of every transfer is a system account, a hot key the drainer paid for on every line)."""
    query = (
        sa.select(column, sa.func.sum(T.amount_minor))
        .where(column.in_(ids), T.result == OK)
        .group_by(column)
    )
    return {row[0]: int(row[1]) for row in conn.execute(query)}


def balances(conn: Connection, ids: Collection[str]) -> dict[str, int]:
    """Ledger balance of each id (customers and system accounts); 0 for unknown ids."""
    if len(ids) > BALANCES_IDS_MAX:
        raise UsageError(f"at most {BALANCES_IDS_MAX} ids per call, got {len(ids)}")
    out = dict.fromkeys(ids, 0)
    system = sorted(i for i in set(ids) if is_system_account_id(i))
    for part in chunks(sorted(set(ids) - set(system))):
        out.update(_customer_sums(conn, part))
    for part in chunks(system):
        credits = _side_sums(conn, T.credit_account_id, part)
        debits = _side_sums(conn, T.debit_account_id, part)
        for account_id in part:
            out[account_id] = credits.get(account_id, 0) - debits.get(account_id, 0)
    return out


def conservation(conn: Connection) -> dict[str, int]:
    """Per currency (of the accounts), the sum of every account's balance. Must be 0."""
    known = conn.execute(sa.select(accounts.c.currency).distinct()).scalars()
    out: dict[str, int] = dict.fromkeys(known, 0)
    for side, sign in ((T.credit_account_id, 1), (T.debit_account_id, -1)):
        currency = sa.func.coalesce(accounts.c.currency, T.currency).label("cur")
        query = (
            sa.select(currency, sa.func.sum(T.amount_minor))
            .select_from(transfers.outerjoin(accounts, accounts.c.id == side))
            .where(T.result == OK)
            .group_by(currency)
        )
        for cur, total in conn.execute(query):
            out[cur] = out.get(cur, 0) + sign * int(total)
    return out


def balances_as_of(
    conn: Connection, ids: Sequence[str], *, epoch_id: str, upto: StreamId
) -> dict[str, int]:
    """Customer balances counting older epochs' transfers and this epoch's up to stream id
    ``upto`` (the caller restricts ``ids`` to one shard, whose journal ``upto`` belongs to)."""
    signed = _signed()
    in_view = sa.or_(
        T.epoch_id != epoch_id,
        T.stream_ms < upto.ms,
        sa.and_(T.stream_ms == upto.ms, T.stream_seq <= upto.seq),
    )
    out = dict.fromkeys(ids, 0)
    for part in chunks(sorted(set(ids))):
        query = (
            sa.select(T.account_id, sa.func.sum(signed))
            .where(T.account_id.in_(part), T.result == OK, in_view)
            .group_by(T.account_id)
        )
        out.update({row[0]: int(row[1]) for row in conn.execute(query)})
    return out


def _beyond(upto: StreamId) -> sa.ColumnElement[bool]:
    return sa.or_(T.stream_ms > upto.ms, sa.and_(T.stream_ms == upto.ms, T.stream_seq > upto.seq))


def has_lines_beyond(conn: Connection, *, epoch_id: str, shard: int, upto: StreamId) -> bool:
    """Whether this epoch's ledger holds a line of ``shard`` positioned after ``upto``
    (one index probe on ix_transfers_position)."""
    query = sa.select(T.id).where(T.epoch_id == epoch_id, T.shard == shard, _beyond(upto)).limit(1)
    return conn.execute(query).first() is not None


def sums_beyond(
    conn: Connection, *, epoch_id: str, shard: int, upto: StreamId
) -> dict[str, tuple[int, int]]:
    """Per customer account: (ok lines, signed sum) of this epoch's lines of ``shard``
    positioned after ``upto``."""
    signed = _signed()
    query = (
        sa.select(T.account_id, sa.func.count(), sa.func.sum(signed))
        .where(T.epoch_id == epoch_id, T.shard == shard, T.result == OK, _beyond(upto))
        .group_by(T.account_id)
    )
    return {row[0]: (int(row[1]), int(row[2])) for row in conn.execute(query)}


def existing_transfer_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for part in chunks(sorted(set(ids))):
        found.update(conn.execute(sa.select(T.id).where(T.id.in_(part))).scalars())
    return found


def _record(row: Any) -> TransferRecord:
    return TransferRecord(
        id=row.id,
        kind=TransferKind(row.kind),
        account_id=row.account_id,
        debit_account_id=row.debit_account_id,
        credit_account_id=row.credit_account_id,
        amount_minor=int(row.amount_minor),
        currency=row.currency,
        result=Result(row.result),
        balance_after_minor=None
        if row.balance_after_minor is None
        else int(row.balance_after_minor),
        ts_ms=int(row.ts_ms),
        epoch_id=row.epoch_id,
    )


_CURSOR_TS_DIGITS_MAX = 18  # below 2**63: the column is a signed 64-bit integer


def _parse_cursor(cursor: str) -> tuple[int, str]:
    """``ts_ms:id``. ASCII digits only (``str.isdigit`` accepts '²', ``int`` accepts Arabic-Indic
    digits) and few enough that the database's 64-bit integer cannot overflow."""
    ts, sep, tid = cursor.partition(":")
    digits_ok = ts.isascii() and ts.isdigit() and len(ts) <= _CURSOR_TS_DIGITS_MAX
    if not sep or not digits_ok or not tid:
        raise UsageError(f"invalid page cursor {cursor!r:.80}")
    return int(ts), tid


def transfers_page(
    conn: Connection, account_id: str, *, after: str | None, limit: int
) -> TransfersPage:
    """An account's transfers (failed ones too), oldest first; the cursor is ``ts_ms:id``."""
    check_page_limit(limit, PAGE_LIMIT_MAX)
    if is_system_account_id(account_id):
        mine = sa.or_(T.debit_account_id == account_id, T.credit_account_id == account_id)
    else:
        mine = T.account_id == account_id
    query = sa.select(transfers).where(mine)
    if after is not None:
        ts, tid = _parse_cursor(after)
        query = query.where(sa.or_(T.ts_ms > ts, sa.and_(T.ts_ms == ts, T.id > tid)))
    rows = conn.execute(query.order_by(T.ts_ms, T.id).limit(limit + 1)).all()
    items = [_record(r) for r in rows[:limit]]
    more = len(rows) > limit
    return TransfersPage(items, f"{items[-1].ts_ms}:{items[-1].id}" if more else None)


def transfers_after(conn: Connection, after: str | None, limit: int) -> list[TransferRecord]:
    """Every transfer in id order, a bounded page at a time (rebuild)."""
    query = sa.select(transfers)
    if after is not None:
        query = query.where(T.id > after)
    query = query.order_by(T.id).limit(check_page_limit(limit, SCAN_LIMIT_MAX))
    return [_record(r) for r in conn.execute(query)]


def count_rows(conn: Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def count_journal_conflicts(conn: Connection) -> int:
    return count_rows(conn, journal_conflicts)
