"""Applying drained journal lines to ``transfers``: idempotent by transfer id, one transaction.

A line whose transfer id is already stored with the same (kind, account, amount, currency,
result) is a redelivery and a no-op. Same id with other parameters is a conflict: recorded in
``journal_conflicts`` verbatim, counted, never applied and never overwriting the first outcome.

Set-based, so the drainer keeps up with the store. The usual batch (every id new) is one bulk
insert straight into ``transfers`` inside a savepoint (``_insert_direct``: PostgreSQL ``COPY``,
SQLite one prepared ``INSERT`` over ``executemany``); when an id is already stored the primary
key refuses it, the savepoint is rolled back and the batch takes the staging path: the batch is
bulk-loaded the same way into a temporary staging table, then ONE
``INSERT … SELECT … ON CONFLICT (id) DO NOTHING``
stores the first line of every id not stored yet, with its counterparty (a pending credit
intent's source) joined in. When every
candidate was inserted there is nothing else to do; otherwise one join of the staging table
with ``transfers`` finds the lines whose id is stored with other parameters (the conflicts);
the rest are duplicates. Balances are never stored (``sql_balances`` derives them), so there
is no balance row to update.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tally.domain.accounts import SystemAccount
from tally.domain.results import Result
from tally.domain.transfers import TransferKind
from tally.errors import LedgerNotInitialised, StoreLost, UsageError
from tally.ledger import sql_holds, sql_outbox, sql_recharge
from tally.ledger.journal import LINES_PER_ENTRY_MAX, format_hold_line, format_line
from tally.ledger.models import (
    ApplyReport,
    CreditIntent,
    DrainedLine,
    HoldLine,
    IntentState,
    JournalLine,
    LineBatch,
    Position,
    RejectedLine,
    StagedRow,
    StreamId,
)
from tally.ledger.schema import ID_LEN, STATUS_LEN, credit_intents, journal_conflicts, transfers
from tally.ledger.sql_accounts import ensure_system_accounts
from tally.ledger.sql_epochs import lock_epochs, shard_epoch_ids
from tally.ledger.sql_intents import difference, pending_intents, pending_intents_among, settle
from tally.ledger.sqlutil import chunks, insert_ignore, now_ms

APPLY_LINES_MAX = 250_000
if not LINES_PER_ENTRY_MAX <= APPLY_LINES_MAX:  # the drainer commits a whole entry at once
    raise ImportError("LINES_PER_ENTRY_MAX must not exceed APPLY_LINES_MAX")
_Params = tuple[str, str, int, str, int]  # kind, account, amount, currency, result
_PARAMS_NAMES = ("kind", "account", "amount", "currency", "result")

# The staging table: one row per line of the batch (``StagedRow``), created and dropped inside
# the batch's own transaction, so a rollback leaves nothing behind and pooled connections
# never see another batch's rows.
_stage_metadata = sa.MetaData()
stage = sa.Table(
    "tally_journal_stage",
    _stage_metadata,
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("id", sa.String(ID_LEN), nullable=False),
    sa.Column("kind", sa.String(STATUS_LEN), nullable=False),
    sa.Column("account_id", sa.String(ID_LEN), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("result", sa.Integer, nullable=False),
    sa.Column("balance_after_minor", sa.BigInteger, nullable=True),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("epoch_id", sa.String(ID_LEN), nullable=False),
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("stream_ms", sa.BigInteger, nullable=False),
    sa.Column("stream_seq", sa.BigInteger, nullable=False),
    sa.Column("line_no", sa.Integer, nullable=False),
    sa.Column("recharge_id", sa.String(ID_LEN), nullable=True),
    prefixes=["TEMPORARY"],
)
_STAGE_COLUMNS = [c.name for c in stage.columns]
# StagedRow positions (Final, so mypy types each element)
_ID: Final = 1
_KIND: Final = 2
_ACCOUNT: Final = 3
_AMOUNT: Final = 4
_CURRENCY: Final = 5
_RESULT: Final = 6
_BALANCE: Final = 7
_TS: Final = 8
_EPOCH: Final = 9
_SHARD: Final = 10
_MS: Final = 11
_SEQ: Final = 12
_LINE_NO: Final = 13
_RECHARGE: Final = 14


def _copy(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Any]) -> None:
    """PostgreSQL ``COPY … FROM STDIN`` inside the caller's transaction. The rows are handed to
    libpq by a writer thread (psycopg's ``QueuedLibpqWriter``), so the server inserts while
    Python still formats rows: two cores work on one batch."""
    import psycopg
    from psycopg.copy import QueuedLibpqWriter

    driver = conn.connection.driver_connection
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    cursor = driver.cursor()  # type: ignore[union-attr]
    try:
        with cursor, cursor.copy(sql, writer=QueuedLibpqWriter(cursor)) as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:  # as SQLAlchemy raises it, so the ledger translates it
        raise sa.exc.DBAPIError.instance(sql, None, exc, psycopg.Error) from exc


def _bulk(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Any]) -> None:
    """PostgreSQL's COPY, SQLite's executemany of one prepared INSERT (both inside the
    caller's transaction)."""
    if conn.dialect.name == "postgresql":
        _copy(conn, table, columns, rows)
    else:
        marks = ", ".join("?" * len(columns))
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        conn.exec_driver_sql(sql, list(rows))


def _load_stage(conn: Connection, rows: Sequence[StagedRow]) -> None:
    stage.create(conn, checkfirst=False)
    _bulk(conn, stage.name, _STAGE_COLUMNS, rows)


def _insert_from_stage(conn: Connection, *, ts: int, first_only: bool) -> int:
    """One INSERT … SELECT … ON CONFLICT DO NOTHING; returns the rows inserted. A credit comes
    from its pending intent's source (card clearing when there is none), a debit goes to usage
    revenue, as ``tally.domain.transfers.counterparty`` says."""
    s, ci = stage.c, credit_intents.c
    # "@<system account>:<currency>", as SystemAccount.account_id spells it
    source = sa.func.coalesce(ci.source, SystemAccount.card_clearing.value)
    clearing = sa.literal("@", sa.String) + source + sa.literal(":", sa.String) + s.currency
    revenue = sa.literal(f"@{SystemAccount.usage_revenue.value}:", sa.String) + s.currency
    debit = TransferKind.debit.value
    columns = [
        s.id,
        s.kind,
        s.account_id,
        sa.case((s.kind == debit, s.account_id), else_=clearing),
        sa.case((s.kind == debit, revenue), else_=s.account_id),
        s.amount_minor,
        s.currency,
        s.result,
        s.balance_after_minor,
        s.ts_ms,
        s.epoch_id,
        s.shard,
        s.stream_ms,
        s.stream_seq,
        s.line_no,
        sa.literal(ts, sa.BigInteger),
    ]
    # SQLite needs a WHERE in an INSERT … SELECT with upsert (else ON CONFLICT parses as a join
    # constraint); it also picks the first line of an id staged twice.
    where = (
        s.n.in_(sa.select(sa.func.min(s.n)).group_by(s.id).scalar_subquery())
        if first_only
        else s.n >= 0
    )
    pending = sa.and_(ci.id == s.id, ci.state == "pending")
    query = sa.select(*columns).select_from(stage.outerjoin(credit_intents, pending)).where(where)
    targets = [
        "id",
        "kind",
        "account_id",
        "debit_account_id",
        "credit_account_id",
        "amount_minor",
        "currency",
        "result",
        "balance_after_minor",
        "ts_ms",
        "epoch_id",
        "shard",
        "stream_ms",
        "stream_seq",
        "line_no",
        "drained_at_ms",
    ]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(transfers).from_select(targets, query)
    stmt = stmt.on_conflict_do_nothing(index_elements=["id"])
    # preserve_rowcount: SQLAlchemy otherwise reports -1 for INSERT … SELECT on psycopg
    return int(conn.execution_options(preserve_rowcount=True).execute(stmt).rowcount)


#: The direct path lists every pending credit intent (a credit's counterparty is its intent's
#: source); with more pending than this the batch takes the staging path, which joins them.
DIRECT_PENDING_INTENTS_MAX = 10_000
_TRANSFER_COLUMNS = [c.name for c in transfers.columns]


def _transfer_rows(
    rows: Sequence[StagedRow], intents: dict[str, CreditIntent], ts: int
) -> Iterator[tuple[Any, ...]]:
    """``transfers`` rows, counterparty as ``_insert_from_stage`` joins it: a debit goes to
    usage revenue, a credit comes from its pending intent's source (card clearing without one)."""
    debit = TransferKind.debit.value
    revenue, clearing = SystemAccount.usage_revenue.value, SystemAccount.card_clearing.value
    for r in rows:
        account, currency = r[_ACCOUNT], r[_CURRENCY]
        if r[_KIND] == debit:
            sides = (account, f"@{revenue}:{currency}")
        else:
            intent = intents.get(r[_ID])
            source = clearing if intent is None else intent.source.value
            sides = (f"@{source}:{currency}", account)
        yield (r[_ID], r[_KIND], account, *sides, *r[_AMOUNT:_RECHARGE], ts)


def _pending_intent_ids(conn: Connection, limit: int) -> set[str] | None:
    """The ids of every pending credit intent, or None when there are more than ``limit``."""
    ci = credit_intents.c
    query = sa.select(ci.id).where(ci.state == IntentState.pending.value).limit(limit + 1)
    found = set(conn.execute(query).scalars())
    return None if len(found) > limit else found


def _insert_direct(
    conn: Connection, rows: Sequence[StagedRow], *, ts: int
) -> dict[str, CreditIntent] | None:
    """The batch straight into ``transfers`` (``_bulk``), inside a savepoint. The usual batch
    (every id new) is then one bulk insert: no staging table, no speculative insertion (a
    PostgreSQL COPY also writes the heap a page of rows per WAL record; on SQLite the staging
    path's table creation, second copy, join and drop cost more than the insert itself, for
    the one-line journal entries coalesced HTTP debits make: README, "Benchmarks"). Returns
    the pending intents among the batch's ids once every row is stored; None when it stored
    nothing: an id twice in the batch, too many pending intents, or an id already in
    ``transfers`` (a redelivery or a conflict: the primary key refuses the insert, the
    savepoint is rolled back, and the caller takes the staging path, which tells duplicates
    from conflicts). Exactly once holds either way: the primary key admits each id once, and
    the insert stores all of the batch or none of it."""
    ids = {row[_ID] for row in rows}
    if len(ids) < len(rows):
        return None
    pending = _pending_intent_ids(conn, DIRECT_PENDING_INTENTS_MAX)
    if pending is None:
        return None
    intents = pending_intents(conn, sorted(pending & ids))
    try:
        with conn.begin_nested():
            _bulk(conn, transfers.name, _TRANSFER_COLUMNS, _transfer_rows(rows, intents, ts))
    except sa.exc.IntegrityError as exc:
        if not _stored_id_refused(exc.orig):
            raise
        return None
    return intents


def _stored_id_refused(error: BaseException | None) -> bool:
    """True for the primary key of ``transfers`` refusing an id (the only unique key of the
    table); any other constraint (a CHECK, NOT NULL) is a ledger error, raised."""
    if isinstance(error, sqlite3.IntegrityError):
        return getattr(error, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_PRIMARYKEY"
    from psycopg.errors import UniqueViolation

    return isinstance(error, UniqueViolation) and error.diag.table_name == transfers.name


def stored_params(conn: Connection, ids: Sequence[str]) -> dict[str, _Params]:
    cols = transfers.c
    found: dict[str, _Params] = {}
    for part in chunks(sorted(set(ids))):
        query = sa.select(
            cols.id, cols.kind, cols.account_id, cols.amount_minor, cols.currency, cols.result
        ).where(cols.id.in_(part))
        for r in conn.execute(query):
            found[r.id] = (r.kind, r.account_id, int(r.amount_minor), r.currency, int(r.result))
    return found


def _conflict_reason(stored: _Params, line: _Params) -> str:
    pairs = zip(_PARAMS_NAMES, stored, line, strict=True)
    return next(f"different_{n}" for n, a, b in pairs if a != b)


def _position(row: StagedRow) -> Position:
    return Position(row[_EPOCH], row[_SHARD], StreamId(row[_MS], row[_SEQ]), row[_LINE_NO])


def _staged_conflicts(conn: Connection, batch: LineBatch) -> list[RejectedLine]:
    """Staged lines whose id is stored with other parameters (the first line of an id staged
    twice is stored by now, so later lines compare with it)."""
    s, t = stage.c, transfers.c
    differs = sa.or_(
        t.kind != s.kind,
        t.account_id != s.account_id,
        t.amount_minor != s.amount_minor,
        t.currency != s.currency,
        t.result != s.result,
    )
    query = (
        sa.select(s.n, t.kind, t.account_id, t.amount_minor, t.currency, t.result)
        .select_from(stage.join(transfers, t.id == s.id))
        .where(differs)
        .order_by(s.n)
    )
    out: list[RejectedLine] = []
    for n, *stored in conn.execute(query):
        row = batch.rows[n]
        mine = (row[_KIND], row[_ACCOUNT], row[_AMOUNT], row[_CURRENCY], row[_RESULT])
        theirs = (stored[0], stored[1], int(stored[2]), stored[3], int(stored[4]))
        reason = _conflict_reason(theirs, mine)
        out.append(RejectedLine(reason, batch.texts[n], _position(row), row[_ID]))
    return out


def _record_rejected(conn: Connection, rejected: Sequence[RejectedLine]) -> int:
    ts = now_ms()
    rows = [
        {
            "reason": r.reason,
            "transfer_id": r.transfer_id,
            "line": r.text,
            "epoch_id": r.position.epoch_id,
            "shard": r.position.shard,
            "stream_ms": r.position.stream_id.ms,
            "stream_seq": r.position.stream_id.seq,
            "line_no": r.position.line_no,
            "detected_at_ms": ts,
        }
        for r in rejected
    ]
    keys = ["epoch_id", "shard", "stream_ms", "stream_seq", "line_no"]
    insert_ignore(conn, journal_conflicts, rows, keys)
    return len(rows)


def _openings(rows: Sequence[StagedRow]) -> list[JournalLine]:
    return [
        JournalLine(
            transfer_id=r[_ID],
            kind=TransferKind(r[_KIND]),
            account_id=r[_ACCOUNT],
            amount_minor=r[_AMOUNT],
            currency=r[_CURRENCY],
            result=Result(r[_RESULT]),
            balance_after_minor=r[_BALANCE],
            ts_ms=r[_TS],
            recharge_id=r[_RECHARGE],
        )
        for r in rows
        if r[_RECHARGE] is not None
    ]


def _settlements(conn: Connection, intents: dict[str, CreditIntent]) -> dict[str, Result]:
    """Each pending intent whose id is now stored settles with that transfer's first outcome,
    or with the replay code Redis would give when the id was used by another transfer."""
    out: dict[str, Result] = {}
    for tid, p in stored_params(conn, list(intents)).items():
        intent = intents[tid]
        wanted = ("credit", intent.account_id, intent.amount_minor, intent.currency)
        out[tid] = difference((p[0], p[1], p[2], p[3]), wanted) or Result(p[4])
    return out


def _split_foreign(
    batch: LineBatch, shard_ids: Sequence[str]
) -> tuple[LineBatch, list[RejectedLine]]:
    """Lines of each shard's own epoch (``shard_ids[shard]``) go on; any other is foreign."""

    def mine(epoch_id: str, shard: int) -> bool:
        return 0 <= shard < len(shard_ids) and epoch_id == shard_ids[shard]

    if all(mine(row[_EPOCH], row[_SHARD]) for row in batch.rows):
        return batch, []
    good = LineBatch(rejected=batch.rejected)
    foreign: list[RejectedLine] = []
    for row, text in zip(batch.rows, batch.texts, strict=True):
        if mine(row[_EPOCH], row[_SHARD]):
            good.rows.append((len(good.rows), *row[1:]))
            good.texts.append(text)
        else:
            foreign.append(RejectedLine("foreign_epoch", text, _position(row), row[_ID]))
    return good, foreign


def _split_foreign_holds(
    batch: LineBatch, shard_ids: Sequence[str]
) -> tuple[list[tuple[HoldLine, Position]], list[RejectedLine]]:
    def mine(pos: Position) -> bool:
        return 0 <= pos.shard < len(shard_ids) and pos.epoch_id == shard_ids[pos.shard]

    held = [(line, pos) for line, pos in batch.holds if mine(pos)]
    foreign = [
        RejectedLine("foreign_epoch", format_hold_line(line), pos, line.hold_id)
        for line, pos in batch.holds
        if not mine(pos)
    ]
    return held, foreign


def _apply_staged(conn: Connection, batch: LineBatch) -> tuple[int, int, list[RejectedLine], int]:
    """(inserted, duplicates, conflicts, intents settled) for lines of the current epoch."""
    rows = batch.rows
    if not rows:
        return 0, 0, [], 0
    ensure_system_accounts(conn, {row[_CURRENCY] for row in rows})
    ts = now_ms()
    direct = _insert_direct(conn, rows, ts=ts)
    if direct is not None:
        intents, inserted, conflicts = direct, len(rows), []
    else:
        _load_stage(conn, rows)
        intents = pending_intents_among(conn, sa.select(stage.c.id))
        unique_ids = len({row[_ID] for row in rows})
        inserted = _insert_from_stage(conn, ts=ts, first_only=unique_ids < len(rows))
        conflicts = [] if inserted == len(rows) else _staged_conflicts(conn, batch)
        stage.drop(conn, checkfirst=False)
    sql_recharge.record_openings(conn, _openings(rows))
    if inserted:  # balance.low crossings, in the same transaction as the lines that crossed
        sql_outbox.note_balances(conn, {row[_ACCOUNT] for row in rows})
    settled = settle(conn, _settlements(conn, intents))
    return inserted, len(rows) - inserted - len(conflicts), conflicts, settled


def apply_batch(
    conn: Connection, batch: LineBatch, *, before_commit: Callable[[], None] | None = None
) -> ApplyReport:
    """Runs inside the caller's write transaction; ``before_commit`` is a fault-injection hook."""
    if len(batch) > APPLY_LINES_MAX:
        raise UsageError(f"journal batch of {len(batch)} lines exceeds {APPLY_LINES_MAX}")
    current, building = lock_epochs(conn, shared=True)
    if current is None:
        raise LedgerNotInitialised("the ledger has no current epoch")
    if building is not None:
        raise StoreLost(f"a rebuild of the store is in progress (epoch {building.epoch_id})")
    shard_ids = shard_epoch_ids(conn, current)  # a shard rebuilt alone has its own epoch
    good, foreign = _split_foreign(batch, shard_ids)
    inserted, duplicates, conflicts, settled = _apply_staged(conn, good)
    # holds: their event lines, after the transfer lines (a capture's debit is one of those)
    held, foreign_holds = _split_foreign_holds(batch, shard_ids)
    hold_texts = [format_hold_line(line) for line, _ in held]
    applied, hold_dups, hold_conflicts = sql_holds.apply_hold_lines(conn, held, hold_texts)
    inserted, duplicates = inserted + applied, duplicates + hold_dups
    conflicts = [*conflicts, *hold_conflicts]
    foreign = [*foreign, *foreign_holds]
    _record_rejected(conn, [*batch.rejected, *foreign, *conflicts])
    if before_commit is not None:
        before_commit()
    conflicted = len(batch.rejected) + len(conflicts)
    return ApplyReport(inserted, duplicates, conflicted, len(foreign), settled)


def apply_journal(
    conn: Connection,
    lines: Sequence[DrainedLine],
    rejected: Sequence[RejectedLine] = (),
    *,
    before_commit: Callable[[], None] | None = None,
) -> ApplyReport:
    """``apply_batch`` for lines already parsed into objects."""
    if len(lines) + len(rejected) > APPLY_LINES_MAX:
        raise UsageError(f"journal batch of {len(lines)} lines exceeds {APPLY_LINES_MAX}")
    batch = LineBatch(rejected=list(rejected))
    for d in lines:
        batch.add_line(d.line, d.position, format_line(d.line))
    return apply_batch(conn, batch, before_commit=before_commit)
