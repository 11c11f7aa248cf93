"""Holds in the ledger of record: every hold's life as ``hold_events`` rows (placed, captured,
voided, expired: each at most once per hold), and ``holds``, one row per hold with its state.

A capture's debit is an ordinary ``transfers`` row (id ``hc-...``, drained from its own debit
line), so balances stay sums over ``transfers``; the HELD amount of an account is the sum of its
open holds, and the available balance is ``balance - held + credit limit``.

Applied by the drainer in the same transaction as the transfer lines (``sql_apply``),
idempotently: a redelivered event is a duplicate; the same (hold, event) with other values is a
conflict, recorded in ``journal_conflicts`` and never applied.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tally.domain.events import EventType
from tally.domain.holds import HoldStatus, capture_transfer_id
from tally.ledger import sql_outbox
from tally.ledger.models import HoldLine, Position, RejectedLine, StreamId
from tally.ledger.schema import ID_LEN, STATUS_LEN, BigId, metadata, recharges
from tally.ledger.sql_accounts import check_page_limit
from tally.ledger.sqlutil import chunks, insert_ignore, now_ms

PAGE_LIMIT_MAX = 5000

holds = sa.Table(
    "holds",
    metadata,
    sa.Column("hold_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("account_id", sa.String(ID_LEN), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("expires_in_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_at_ms", sa.BigInteger, nullable=False),  # by the store's clock
    sa.Column("status", sa.String(STATUS_LEN), nullable=False),
    sa.Column("place_result", sa.Integer, nullable=False),  # domain.holds.HoldCode
    sa.Column("captured_minor", sa.BigInteger, nullable=True),
    sa.Column("capture_transfer_id", sa.String(ID_LEN), nullable=True),
    sa.Column("placed_at_ms", sa.BigInteger, nullable=False),
    sa.Column("closed_at_ms", sa.BigInteger, nullable=True),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.CheckConstraint(
        "status IN ('open', 'captured', 'voided', 'expired', 'refused')", name="ck_holds_status"
    ),
    sa.CheckConstraint("amount_minor > 0", name="ck_holds_amount"),
)
sa.Index("ix_holds_account_status", holds.c.account_id, holds.c.status)

hold_events = sa.Table(
    "hold_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("hold_id", sa.String(ID_LEN), nullable=False),
    sa.Column("event", sa.String(STATUS_LEN), nullable=False),
    sa.Column("account_id", sa.String(ID_LEN), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("result", sa.Integer, nullable=False),
    sa.Column("balance_after_minor", sa.BigInteger, nullable=True),
    sa.Column("held_after_minor", sa.BigInteger, nullable=True),
    sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("epoch_id", sa.String(ID_LEN), nullable=False),
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("stream_ms", sa.BigInteger, nullable=False),
    sa.Column("stream_seq", sa.BigInteger, nullable=False),
    sa.Column("line_no", sa.Integer, nullable=False),
    sa.Column("drained_at_ms", sa.BigInteger, nullable=False),
    sa.CheckConstraint(
        "event IN ('placed', 'captured', 'voided', 'expired')", name="ck_hold_events_event"
    ),
    sa.UniqueConstraint("hold_id", "event", name="uq_hold_events_hold_event"),
)
sa.Index("ix_hold_events_account", hold_events.c.account_id, hold_events.c.id)

H, E = holds.c, hold_events.c
_CLOSING = ("captured", "voided", "expired")


@dataclass(frozen=True, slots=True)
class LedgerHold:
    hold_id: str
    account_id: str
    currency: str
    amount_minor: int
    expires_in_ms: int
    expires_at_ms: int
    status: HoldStatus
    place_result: int
    captured_minor: int | None
    capture_transfer_id: str | None
    placed_at_ms: int
    closed_at_ms: int | None
    #: (event -> (balance after, held after)) of its events, for a rebuild's exact replays
    after: dict[str, tuple[int | None, int | None]]
    #: the auto-recharge its capture opened
    recharge_id: str | None = None


# -- applying journal lines --------------------------------------------------------------------
def _event_row(line: HoldLine, pos: Position, ts: int) -> dict[str, object]:
    return {
        "hold_id": line.hold_id,
        "event": line.event,
        "account_id": line.account_id,
        "amount_minor": line.amount_minor,
        "currency": line.currency,
        "result": line.result,
        "balance_after_minor": line.balance_after_minor,
        "held_after_minor": line.held_after_minor,
        "expires_at_ms": line.expires_at_ms,
        "ts_ms": line.ts_ms,
        "epoch_id": pos.epoch_id,
        "shard": pos.shard,
        "stream_ms": pos.stream_id.ms,
        "stream_seq": pos.stream_id.seq,
        "line_no": pos.line_no,
        "drained_at_ms": ts,
    }


def _record_placed(conn: Connection, line: HoldLine, ts: int) -> None:
    row = {
        "hold_id": line.hold_id,
        "account_id": line.account_id,
        "currency": line.currency,
        "amount_minor": line.amount_minor,
        # the script stamps a place with the time it computed the expiry from
        "expires_in_ms": line.expires_at_ms - line.ts_ms,
        "expires_at_ms": line.expires_at_ms,
        "status": (HoldStatus.open if line.result == 0 else HoldStatus.refused).value,
        "place_result": line.result,
        "placed_at_ms": line.ts_ms,
        "updated_at_ms": ts,
    }
    insert_ignore(conn, holds, [row], ["hold_id"])


def _close(conn: Connection, line: HoldLine, ts: int, **values: object) -> bool:
    """True when this line closed an open hold (False: it was not open in the ledger)."""
    done = conn.execute(
        holds.update()
        .where(H.hold_id == line.hold_id, H.status == HoldStatus.open.value)
        .values(status=line.event, closed_at_ms=line.ts_ms, updated_at_ms=ts, **values)
    )
    return bool(done.rowcount)


def record_hold_expired(conn: Connection, line: HoldLine, ts: int) -> None:
    """THE place a hold's expiry reaches the ledger of record (once per hold: its event row is
    new). Its amount is released; no money moves. Its ``hold.expired`` event is written here,
    in the drain's transaction, so the event and the ledger's record of the expiry are one."""
    if _close(conn, line, ts):
        sql_outbox.emit(
            conn,
            EventType.hold_expired,
            {
                "hold_id": line.hold_id,
                "account_id": line.account_id,
                "amount_minor": line.amount_minor,
                "currency": line.currency,
                "expired_at_ms": line.ts_ms,
                "held_after_minor": line.held_after_minor,
            },
            account_id=line.account_id,
            source=f"hold:{line.hold_id}",
        )


def _record(conn: Connection, line: HoldLine, ts: int) -> None:
    if line.event == "placed":
        _record_placed(conn, line, ts)
    elif line.event == "captured":
        _close(
            conn,
            line,
            ts,
            captured_minor=line.amount_minor,
            capture_transfer_id=capture_transfer_id(line.hold_id),
        )
    elif line.event == "voided":
        _close(conn, line, ts)
    else:
        record_hold_expired(conn, line, ts)


def _same(stored: Any, line: HoldLine) -> bool:
    return (stored.account_id, int(stored.amount_minor), int(stored.result)) == (
        line.account_id,
        line.amount_minor,
        line.result,
    )


def apply_hold_lines(
    conn: Connection, lines: Sequence[tuple[HoldLine, Position]], texts: Sequence[str]
) -> tuple[int, int, list[RejectedLine]]:
    """(applied, duplicates, conflicts) for hold lines of the current epoch, in journal order,
    inside the caller's transaction."""
    ts = now_ms()
    applied, duplicates, conflicts = 0, 0, []
    for (line, pos), text in zip(lines, texts, strict=True):
        inserted = insert_ignore(
            conn, hold_events, [_event_row(line, pos, ts)], ["hold_id", "event"], returning=E.id
        )
        if inserted:
            _record(conn, line, ts)
            applied += 1
            continue
        stored = conn.execute(
            sa.select(E.account_id, E.amount_minor, E.result).where(
                E.hold_id == line.hold_id, E.event == line.event
            )
        ).one()
        if _same(stored, line):
            duplicates += 1
        else:
            conflicts.append(RejectedLine("hold_conflict", text, pos, line.hold_id))
    return applied, duplicates, conflicts


# -- reading -----------------------------------------------------------------------------------
def _hold(row: sa.Row[Any], after: dict[str, tuple[int | None, int | None]]) -> LedgerHold:
    m = row._mapping
    return LedgerHold(
        hold_id=m["hold_id"],
        account_id=m["account_id"],
        currency=m["currency"],
        amount_minor=int(m["amount_minor"]),
        expires_in_ms=int(m["expires_in_ms"]),
        expires_at_ms=int(m["expires_at_ms"]),
        status=HoldStatus(m["status"]),
        place_result=int(m["place_result"]),
        captured_minor=None if m["captured_minor"] is None else int(m["captured_minor"]),
        capture_transfer_id=m["capture_transfer_id"],
        placed_at_ms=int(m["placed_at_ms"]),
        closed_at_ms=None if m["closed_at_ms"] is None else int(m["closed_at_ms"]),
        after=after,
    )


def _afters(
    conn: Connection, ids: Sequence[str]
) -> dict[str, dict[str, tuple[int | None, int | None]]]:
    out: dict[str, dict[str, tuple[int | None, int | None]]] = {}
    for part in chunks(sorted(set(ids))):
        query = sa.select(E.hold_id, E.event, E.balance_after_minor, E.held_after_minor).where(
            E.hold_id.in_(part)
        )
        for hid, event, bal, held in conn.execute(query):
            out.setdefault(hid, {})[event] = (
                None if bal is None else int(bal),
                None if held is None else int(held),
            )
    return out


def get_hold(conn: Connection, hold_id: str) -> LedgerHold | None:
    row = conn.execute(sa.select(holds).where(H.hold_id == hold_id)).first()
    return None if row is None else _hold(row, _afters(conn, [hold_id]).get(hold_id, {}))


def holds_after(conn: Connection, after: str | None, limit: int) -> list[LedgerHold]:
    """Every hold in id order, a bounded page at a time (rebuild)."""
    query = sa.select(holds)
    if after is not None:
        query = query.where(H.hold_id > after)
    rows = conn.execute(
        query.order_by(H.hold_id).limit(check_page_limit(limit, PAGE_LIMIT_MAX))
    ).all()
    afters = _afters(conn, [r.hold_id for r in rows])
    opened = _opened_by(conn, [r.capture_transfer_id for r in rows if r.capture_transfer_id])
    return [
        replace(_hold(r, afters.get(r.hold_id, {})), recharge_id=opened.get(r.capture_transfer_id))
        for r in rows
    ]


def _opened_by(conn: Connection, capture_ids: Sequence[str]) -> dict[str, str]:
    """capture debit id -> the recharge it opened (``recharges.opened_by``)."""
    out: dict[str, str] = {}
    for part in chunks(sorted(set(capture_ids))):
        query = sa.select(recharges.c.opened_by, recharges.c.id).where(
            recharges.c.opened_by.in_(part)
        )
        out.update({by: rid for by, rid in conn.execute(query)})
    return out


def held(conn: Connection, ids: Collection[str]) -> dict[str, int]:
    """The sum of each account's open holds (0 without any)."""
    out = dict.fromkeys(ids, 0)
    for part in chunks(sorted(set(ids))):
        query = (
            sa.select(H.account_id, sa.func.sum(H.amount_minor))
            .where(H.account_id.in_(part), H.status == HoldStatus.open.value)
            .group_by(H.account_id)
        )
        out.update({a: int(s) for a, s in conn.execute(query)})
    return out


def _in_view(epoch_id: str, upto: StreamId, table: sa.FromClause) -> sa.ColumnElement[bool]:
    c = table.c
    return sa.or_(
        c.epoch_id != epoch_id,
        c.stream_ms < upto.ms,
        sa.and_(c.stream_ms == upto.ms, c.stream_seq <= upto.seq),
    )


def held_as_of(
    conn: Connection, ids: Sequence[str], *, epoch_id: str, upto: StreamId
) -> dict[str, int]:
    """Each account's held sum as of stream id ``upto`` of the current epoch (reconcile): holds
    placed (ok) in view and not closed in view."""
    placed, closing = hold_events.alias("placed"), hold_events.alias("closing")
    closed = (
        sa.select(closing.c.id)
        .where(
            closing.c.hold_id == placed.c.hold_id,
            closing.c.event.in_(_CLOSING),
            _in_view(epoch_id, upto, closing),
        )
        .exists()
    )
    out = dict.fromkeys(ids, 0)
    for part in chunks(sorted(set(ids))):
        query = (
            sa.select(placed.c.account_id, sa.func.sum(placed.c.amount_minor))
            .where(
                placed.c.account_id.in_(part),
                placed.c.event == "placed",
                placed.c.result == 0,
                _in_view(epoch_id, upto, placed),
                ~closed,
            )
            .group_by(placed.c.account_id)
        )
        out.update({a: int(s) for a, s in conn.execute(query)})
    return out


def stored_events(conn: Connection, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (hold id, event) pairs the ledger holds."""
    found: set[tuple[str, str]] = set()
    for part in chunks(sorted({hid for hid, _ in keys})):
        query = sa.select(E.hold_id, E.event).where(E.hold_id.in_(part))
        found.update((h, e) for h, e in conn.execute(query))
    return {k for k in keys if k in found}
