"""The transactional outbox: every decision a dependent must know is written to ``events`` by
the decision's own SQL transaction (``emit(conn, ...)`` takes the caller's open connection), so
a decision that rolls back leaves no event and a committed decision always has its event.

``events.id`` is the cursor: strictly increasing in commit order. SQLite has one writer at a
time; on PostgreSQL a sequence value is taken at INSERT and transactions may commit out of that
order, so ``emit`` first takes a transaction-level advisory lock held until commit: the outbox's
writers are serialised and a reader that saw cursor N never later finds an N' < N appear.

``event_id`` (``evt_…``) is the stable identity a consumer dedupes on (the ``webhook-id``).
``source`` names the decision an event belongs to (``recharge:<id>``, ``account_event:<n>``,
``freeze:<n>``): unique, so one decision can never have two events.

Also here: per-account low-balance alerts. The drainer, applying journal lines in one
transaction, calls ``note_balances`` with the accounts it touched: a balance that fell below
the account's threshold emits ``balance.low`` once and marks the alert ``below``; a balance back
at or above the threshold re-arms it (the next crossing emits again).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tally.domain.events import EVENT_ID_PREFIX, EventType, check_type, encode_data, payload
from tally.domain.limits import BALANCE_MINOR_MAX
from tally.errors import UsageError
from tally.ledger.schema import ID_LEN, BigId, accounts, metadata
from tally.ledger.sql_balances import balances
from tally.ledger.sqlutil import chunks, now_ms

TYPE_LEN = 32
SOURCE_LEN = 200
EVENT_ID_LEN = 40
PAGE_MAX = 1000
#: Cursors fit a signed 64-bit column with room to spare.
CURSOR_MAX = 2**62
#: Any constant: serialises outbox writers on PostgreSQL (see the module docstring).
PG_OUTBOX_LOCK = 0x7A11E0

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(EVENT_ID_LEN), nullable=False),
    sa.Column("type", sa.String(TYPE_LEN), nullable=False),
    sa.Column("source", sa.String(SOURCE_LEN), nullable=True),
    sa.Column("account_id", sa.String(ID_LEN), nullable=True),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("event_id", name="uq_events_event_id"),
    sa.UniqueConstraint("source", name="uq_events_source"),
)
sa.Index("ix_events_type", events.c.type, events.c.id)

balance_alerts = sa.Table(
    "balance_alerts",
    metadata,
    sa.Column("account_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("threshold_minor", sa.BigInteger, nullable=False),
    sa.Column("below", sa.Boolean, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    cursor: int
    event_id: str
    type: str
    source: str | None
    account_id: str | None
    data: str  # JSON
    created_at_ms: int

    def payload(self) -> dict[str, Any]:
        return payload(self.event_id, self.cursor, self.type, self.created_at_ms, self.data)


def _event(row: Any) -> StoredEvent:
    return StoredEvent(
        int(row.id),
        row.event_id,
        row.type,
        row.source,
        row.account_id,
        row.data,
        int(row.created_at_ms),
    )


def emit(
    conn: Connection,
    type_: EventType | str,
    data: Mapping[str, Any],
    *,
    account_id: str | None = None,
    source: str | None = None,
) -> StoredEvent:
    """Write one event in the caller's transaction (it commits or rolls back with it).

    The one-call API for every decision, e.g. ``emit(conn, "hold.expired", {...},
    account_id=a, source=f"hold:{hold_id}")``. A second event for the same ``source`` raises
    (a bug: one decision, one event), and so the whole decision rolls back."""
    kind = check_type(str(type_))
    text = encode_data(data)
    if source is not None and not 1 <= len(source) <= SOURCE_LEN:
        raise UsageError(f"an event source is 1..{SOURCE_LEN} characters")
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_OUTBOX_LOCK})
    event_id, at_ms = EVENT_ID_PREFIX + uuid.uuid4().hex, now_ms()
    row = {
        "event_id": event_id,
        "type": kind.value,
        "source": source,
        "account_id": account_id,
        "data": text,
        "created_at_ms": at_ms,
    }
    inserted = conn.execute(sa.insert(events).values(**row)).inserted_primary_key
    assert inserted is not None
    return StoredEvent(int(inserted[0]), event_id, kind.value, source, account_id, text, at_ms)


def events_after(
    conn: Connection, after: int, limit: int, types: Sequence[str] | None = None
) -> list[StoredEvent]:
    if not 1 <= limit <= PAGE_MAX:
        raise UsageError(f"limit must be 1..{PAGE_MAX}")
    if not 0 <= after <= CURSOR_MAX:
        raise UsageError(f"a cursor is 0..{CURSOR_MAX}")
    query = sa.select(events).where(events.c.id > after)
    if types is not None:
        query = query.where(events.c.type.in_(list(types)))
    return [_event(r) for r in conn.execute(query.order_by(events.c.id).limit(limit))]


def last_cursor(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))).scalar_one())


# -- low-balance alerts -------------------------------------------------------------------------
def set_alert(conn: Connection, account_id: str, threshold_minor: int | None) -> bool:
    """Set (armed: the next crossing emits) or remove an account's low-balance threshold.
    False when the account does not exist."""
    found = conn.execute(
        sa.select(accounts.c.id).where(accounts.c.id == account_id, accounts.c.kind == "customer")
    ).first()
    if found is None:
        return False
    conn.execute(sa.delete(balance_alerts).where(balance_alerts.c.account_id == account_id))
    if threshold_minor is not None:
        if type(threshold_minor) is not int or abs(threshold_minor) > BALANCE_MINOR_MAX:
            raise UsageError(f"threshold_minor must be an integer within ±{BALANCE_MINOR_MAX}")
        conn.execute(
            sa.insert(balance_alerts).values(
                account_id=account_id,
                threshold_minor=threshold_minor,
                below=False,
                updated_at_ms=now_ms(),
            )
        )
    return True


def get_alert(conn: Connection, account_id: str) -> tuple[int, bool] | None:
    cols = balance_alerts.c
    row = conn.execute(
        sa.select(cols.threshold_minor, cols.below).where(cols.account_id == account_id)
    ).first()
    return None if row is None else (int(row.threshold_minor), bool(row.below))


def note_balances(conn: Connection, account_ids: Iterable[str]) -> int:
    """In the drainer's transaction: emit ``balance.low`` for each account whose ledger balance
    is now below its threshold and was not before; re-arm those back above. Returns events."""
    cols = balance_alerts.c
    alerts: dict[str, int] = {}
    for part in chunks(sorted(set(account_ids))):
        query = sa.select(cols.account_id, cols.threshold_minor).where(cols.account_id.in_(part))
        alerts.update({r.account_id: int(r.threshold_minor) for r in conn.execute(query)})
    if not alerts:
        return 0
    emitted = 0
    current = balances(conn, list(alerts))
    for account_id, threshold in sorted(alerts.items()):
        balance = current[account_id]
        low = balance < threshold
        # Compare-and-set on ``below``: one event per crossing, also with two drainers.
        flipped = conn.execute(
            sa.update(balance_alerts)
            .where(cols.account_id == account_id, cols.below == (not low))
            .values(below=low, updated_at_ms=now_ms())
        ).rowcount
        if flipped and low:
            data = {
                "account_id": account_id,
                "balance_minor": balance,
                "threshold_minor": threshold,
            }
            emit(conn, EventType.balance_low, data, account_id=account_id)
            emitted += 1
    return emitted
