"""Applying drained journal lines to ``transfers``: idempotent by transfer id, one transaction.

A line whose transfer id is already stored with the same (kind, account, amount, currency,
result) is a redelivery and a no-op. Same id with other parameters is a conflict: recorded in
``journal_conflicts`` verbatim, counted, never applied and never overwriting the first outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tally.domain.results import Result
from tally.domain.transfers import TransferKind, counterparty
from tally.errors import LedgerNotInitialised, StoreLost, UsageError
from tally.ledger import sql_recharge
from tally.ledger.journal import format_line
from tally.ledger.models import ApplyReport, CreditIntent, DrainedLine, RejectedLine
from tally.ledger.schema import journal_conflicts, transfers
from tally.ledger.sql_accounts import ensure_system_accounts
from tally.ledger.sql_epochs import lock_epochs
from tally.ledger.sql_intents import difference, pending_intents, settle
from tally.ledger.sqlutil import chunks, insert_ignore, now_ms

APPLY_LINES_MAX = 250_000
_Params = tuple[str, str, int, str, int]  # kind, account, amount, currency, result


def _params_of_line(d: DrainedLine) -> _Params:
    line = d.line
    return (line.kind.value, line.account_id, line.amount_minor, line.currency, int(line.result))


def _row(d: DrainedLine, intents: dict[str, CreditIntent], ts: int) -> dict[str, Any]:
    line, pos = d.line, d.position
    intent = intents.get(line.transfer_id)
    source = intent.source if intent is not None and line.kind is TransferKind.credit else None
    other = counterparty(line.kind, line.currency, source)
    debit, credit = (
        (line.account_id, other) if line.kind is TransferKind.debit else (other, line.account_id)
    )
    return {
        "id": line.transfer_id,
        "kind": line.kind.value,
        "account_id": line.account_id,
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount_minor": line.amount_minor,
        "currency": line.currency,
        "result": int(line.result),
        "balance_after_minor": line.balance_after_minor,
        "ts_ms": line.ts_ms,
        "epoch_id": pos.epoch_id,
        "shard": pos.shard,
        "stream_ms": pos.stream_id.ms,
        "stream_seq": pos.stream_id.seq,
        "line_no": pos.line_no,
        "drained_at_ms": ts,
    }


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
    names = ("kind", "account", "amount", "currency", "result")
    return next(f"different_{n}" for n, a, b in zip(names, stored, line, strict=True) if a != b)


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


def _insert_lines(
    conn: Connection, lines: Sequence[DrainedLine], intents: dict[str, CreditIntent]
) -> tuple[int, int, list[RejectedLine]]:
    """(inserted, duplicates, conflicts): the first line of each id is a candidate row."""
    first: dict[str, int] = {}  # transfer id -> index of its first line in this batch
    for i, d in enumerate(lines):
        first.setdefault(d.line.transfer_id, i)
    ensure_system_accounts(conn, {d.line.currency for d in lines})
    ts = now_ms()
    rows = [_row(lines[i], intents, ts) for i in first.values()]
    inserted = insert_ignore(conn, transfers, rows, ["id"], returning=transfers.c.id)
    stored = stored_params(conn, [tid for tid in first if tid not in inserted])
    stored.update({tid: _params_of_line(lines[first[tid]]) for tid in inserted})
    duplicates, conflicts = 0, []
    for i, d in enumerate(lines):
        tid = d.line.transfer_id
        if tid in inserted and first[tid] == i:
            continue
        mine = _params_of_line(d)
        if stored[tid] == mine:
            duplicates += 1
        else:
            reason = _conflict_reason(stored[tid], mine)
            conflicts.append(RejectedLine(reason, format_line(d.line), d.position, tid))
    return len(inserted), duplicates, conflicts


def _settlements(conn: Connection, intents: dict[str, CreditIntent]) -> dict[str, Result]:
    """Each pending intent whose id is now stored settles with that transfer's first outcome,
    or with the replay code Redis would give when the id was used by another transfer."""
    out: dict[str, Result] = {}
    for tid, p in stored_params(conn, list(intents)).items():
        intent = intents[tid]
        wanted = ("credit", intent.account_id, intent.amount_minor, intent.currency)
        out[tid] = difference((p[0], p[1], p[2], p[3]), wanted) or Result(p[4])
    return out


def apply_journal(
    conn: Connection,
    batch: Sequence[DrainedLine],
    rejected: Sequence[RejectedLine] = (),
    *,
    before_commit: Callable[[], None] | None = None,
) -> ApplyReport:
    """Runs inside the caller's write transaction; ``before_commit`` is a fault-injection hook."""
    if len(batch) + len(rejected) > APPLY_LINES_MAX:
        raise UsageError(f"journal batch of {len(batch)} lines exceeds {APPLY_LINES_MAX}")
    current, building = lock_epochs(conn)
    if current is None:
        raise LedgerNotInitialised("the ledger has no current epoch")
    if building is not None:
        raise StoreLost(f"a rebuild of the store is in progress (epoch {building.epoch_id})")
    good = [d for d in batch if d.position.epoch_id == current.epoch_id]
    foreign = [
        RejectedLine("foreign_epoch", format_line(d.line), d.position, d.line.transfer_id)
        for d in batch
        if d.position.epoch_id != current.epoch_id
    ]
    intents = pending_intents(conn, [d.line.transfer_id for d in good])
    inserted, duplicates, conflicts = _insert_lines(conn, good, intents)
    sql_recharge.record_openings(conn, [d.line for d in good if d.line.recharge_id is not None])
    all_rejected = [*rejected, *foreign, *conflicts]
    _record_rejected(conn, all_rejected)
    settled = settle(conn, _settlements(conn, intents))
    if before_commit is not None:
        before_commit()
    return ApplyReport(inserted, duplicates, len(rejected) + len(conflicts), len(foreign), settled)
