"""Webhook endpoints and their deliveries, in the ledger: a delivery worker that is killed loses
nothing, because what was sent, what is due and what is dead-lettered is all here.

- ``webhook_endpoints``: url, signing secret, optional event-type filter, ``fanned_through``
  (the outbox cursor up to which deliveries were created for it), and a lease
  (``lease_owner``, ``lease_until_ms``): one worker at a time works on an endpoint, so there is
  one request in flight per endpoint, also with several ``tally serve`` on one ledger.
- ``webhook_deliveries``: one row per (endpoint, event), ``pending`` → ``delivered`` | ``dead``,
  with the attempts made, when the next is due, and the last status or error.

Every method of ``WebhookBook`` is one transaction.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tally.domain.events import check_host, check_secret, check_types, check_url, new_secret
from tally.ledger.schema import BigId, metadata
from tally.ledger.sql_outbox import StoredEvent, events, events_after, last_cursor
from tally.ledger.sqlutil import insert_ignore, now_ms

ENDPOINT_ID_LEN = 40
URL_LEN = 2048
SECRET_LEN = 100
STATE_LEN = 16
ERROR_LEN_MAX = 300
ENDPOINTS_MAX = 1000
PAGE_MAX = 1000
SECRET_BYTES_DEFAULT = 32

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(ENDPOINT_ID_LEN), primary_key=True),
    sa.Column("url", sa.String(URL_LEN), nullable=False),
    sa.Column("secret", sa.String(SECRET_LEN), nullable=False),
    sa.Column("event_types", sa.Text, nullable=True),  # JSON list; NULL: every type
    sa.Column("fanned_through", sa.BigInteger, nullable=False),
    sa.Column("lease_owner", sa.String(80), nullable=True),
    sa.Column("lease_until_ms", sa.BigInteger, nullable=True),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("deleted_at_ms", sa.BigInteger, nullable=True),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("endpoint_id", sa.String(ENDPOINT_ID_LEN), nullable=False),
    sa.Column("event_seq", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(STATE_LEN), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at_ms", sa.BigInteger, nullable=False),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.String(ERROR_LEN_MAX), nullable=True),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("endpoint_id", "event_seq", name="uq_webhook_deliveries_event"),
    sa.CheckConstraint(
        "state IN ('pending', 'delivered', 'dead')", name="ck_webhook_deliveries_state"
    ),
)
sa.Index(
    "ix_webhook_deliveries_queue",
    webhook_deliveries.c.endpoint_id,
    webhook_deliveries.c.state,
    webhook_deliveries.c.event_seq,
)


class Transactions(Protocol):
    def transaction(
        self, *, write: bool = False, snapshot: bool = False
    ) -> AbstractContextManager[Connection]: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    url: str
    secret: str
    event_types: tuple[str, ...] | None
    fanned_through: int
    created_at_ms: int
    deleted_at_ms: int | None


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    endpoint_id: str
    event_seq: int
    state: str
    attempts: int
    next_attempt_at_ms: int
    last_status: int | None
    last_error: str | None
    updated_at_ms: int


def _endpoint(row: Any) -> Endpoint:
    types = None if row.event_types is None else tuple(json.loads(row.event_types))
    return Endpoint(
        row.id,
        row.url,
        row.secret,
        types,
        int(row.fanned_through),
        int(row.created_at_ms),
        None if row.deleted_at_ms is None else int(row.deleted_at_ms),
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        int(row.id),
        row.endpoint_id,
        int(row.event_seq),
        row.state,
        int(row.attempts),
        int(row.next_attempt_at_ms),
        None if row.last_status is None else int(row.last_status),
        row.last_error,
        int(row.updated_at_ms),
    )


class WebhookBook:
    def __init__(self, ledger: Transactions) -> None:
        self.ledger = ledger

    # -- endpoints -------------------------------------------------------------------------------
    def register(
        self,
        url: str,
        event_types: Sequence[str] | None,
        secret: str | None = None,
        *,
        hosts: frozenset[str] | None = None,
    ) -> tuple[Endpoint, str]:
        """Check the definition (``EndpointRefused`` with a stable code, nothing written), then
        create the endpoint with the caller's secret or a new random one; returns both."""
        checked_url = check_url(url)
        check_host(checked_url, hosts)
        types = check_types(None if event_types is None else list(event_types))
        signing = new_secret(secrets.token_bytes(SECRET_BYTES_DEFAULT))
        if secret is not None:
            signing = check_secret(secret)
        names = None if types is None else [t.value for t in types]
        endpoint = self.create("we_" + uuid.uuid4().hex, checked_url, signing, names)
        return endpoint, signing

    def create(
        self, endpoint_id: str, url: str, secret: str, event_types: Sequence[str] | None
    ) -> Endpoint:
        """A new endpoint receives the events emitted from now on (the pull API has the past)."""
        with self.ledger.transaction(write=True) as conn:
            row = {
                "id": endpoint_id,
                "url": url,
                "secret": secret,
                "event_types": None if event_types is None else json.dumps(list(event_types)),
                "fanned_through": last_cursor(conn),
                "created_at_ms": now_ms(),
            }
            conn.execute(sa.insert(webhook_endpoints).values(**row))
            found = conn.execute(
                sa.select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
            ).one()
            return _endpoint(found)

    def get(self, endpoint_id: str) -> Endpoint | None:
        cols = webhook_endpoints.c
        with self.ledger.transaction() as conn:
            row = conn.execute(
                sa.select(webhook_endpoints).where(
                    cols.id == endpoint_id, cols.deleted_at_ms.is_(None)
                )
            ).first()
            return None if row is None else _endpoint(row)

    def active(self, *, limit: int = ENDPOINTS_MAX) -> list[Endpoint]:
        cols = webhook_endpoints.c
        query = (
            sa.select(webhook_endpoints)
            .where(cols.deleted_at_ms.is_(None))
            .order_by(cols.created_at_ms, cols.id)
            .limit(min(limit, ENDPOINTS_MAX))
        )
        with self.ledger.transaction() as conn:
            return [_endpoint(r) for r in conn.execute(query)]

    def delete(self, endpoint_id: str) -> bool:
        """Soft delete: the endpoint's delivery history stays; nothing more is sent to it."""
        cols = webhook_endpoints.c
        with self.ledger.transaction(write=True) as conn:
            done = conn.execute(
                sa.update(webhook_endpoints)
                .where(cols.id == endpoint_id, cols.deleted_at_ms.is_(None))
                .values(deleted_at_ms=now_ms())
            )
            return done.rowcount == 1

    # -- the delivery queue ------------------------------------------------------------------------
    def fan_out(self, endpoint: Endpoint, *, limit: int, due_at_ms: int | None = None) -> int:
        """Queue the endpoint's next events (after ``fanned_through``, bounded) as deliveries.
        Idempotent: a second worker doing the same queues nothing twice."""
        with self.ledger.transaction(write=True) as conn:
            page = events_after(conn, endpoint.fanned_through, min(limit, PAGE_MAX))
            if not page:
                return 0
            wanted = [
                e for e in page if endpoint.event_types is None or e.type in endpoint.event_types
            ]
            ts = now_ms()
            rows = [
                {
                    "endpoint_id": endpoint.id,
                    "event_seq": e.cursor,
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at_ms": ts if due_at_ms is None else due_at_ms,
                    "created_at_ms": ts,
                    "updated_at_ms": ts,
                }
                for e in wanted
            ]
            insert_ignore(conn, webhook_deliveries, rows, ["endpoint_id", "event_seq"])
            cols = webhook_endpoints.c
            conn.execute(
                sa.update(webhook_endpoints)
                .where(cols.id == endpoint.id, cols.fanned_through < page[-1].cursor)
                .values(fanned_through=page[-1].cursor)
            )
            return len(rows)

    def lease(self, endpoint_id: str, owner: str, lease_ms: int) -> bool:
        """Take (or renew) the endpoint for ``lease_ms``; False while another owner holds it."""
        cols = webhook_endpoints.c
        ts = now_ms()
        with self.ledger.transaction(write=True) as conn:
            done = conn.execute(
                sa.update(webhook_endpoints)
                .where(
                    cols.id == endpoint_id,
                    cols.deleted_at_ms.is_(None),
                    sa.or_(
                        cols.lease_owner.is_(None),
                        cols.lease_owner == owner,
                        cols.lease_until_ms < ts,
                    ),
                )
                .values(lease_owner=owner, lease_until_ms=ts + lease_ms)
            )
            return done.rowcount == 1

    def release(self, endpoint_id: str, owner: str) -> None:
        cols = webhook_endpoints.c
        with self.ledger.transaction(write=True) as conn:
            conn.execute(
                sa.update(webhook_endpoints)
                .where(cols.id == endpoint_id, cols.lease_owner == owner)
                .values(lease_owner=None, lease_until_ms=None)
            )

    def head(self, endpoint_id: str) -> tuple[Delivery, StoredEvent] | None:
        """The endpoint's oldest pending delivery with its event: ordering is head-of-line."""
        d = webhook_deliveries.c
        query = (
            sa.select(webhook_deliveries)
            .where(d.endpoint_id == endpoint_id, d.state == "pending")
            .order_by(d.event_seq)
            .limit(1)
        )
        with self.ledger.transaction() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            delivery = _delivery(row)
            found = events_after(conn, delivery.event_seq - 1, 1)
        assert found and found[0].cursor == delivery.event_seq, "a delivery without its event"
        return delivery, found[0]

    def delivered(self, delivery_id: int, status: int) -> bool:
        return self._finish(delivery_id, "delivered", status=status, error=None, attempts=None)

    def failed(
        self,
        delivery_id: int,
        *,
        attempts: int,
        next_attempt_at_ms: int,
        status: int | None,
        error: str,
        dead: bool,
    ) -> bool:
        state = "dead" if dead else "pending"
        return self._finish(
            delivery_id,
            state,
            status=status,
            error=error,
            attempts=attempts,
            next_attempt_at_ms=next_attempt_at_ms,
        )

    def _finish(
        self,
        delivery_id: int,
        state: str,
        *,
        status: int | None,
        error: str | None,
        attempts: int | None,
        next_attempt_at_ms: int | None = None,
    ) -> bool:
        d = webhook_deliveries.c
        values: dict[str, Any] = {
            "state": state,
            "last_status": status,
            "last_error": None if error is None else error[:ERROR_LEN_MAX],
            "updated_at_ms": now_ms(),
            "attempts": d.attempts + 1 if attempts is None else attempts,
        }
        if next_attempt_at_ms is not None:
            values["next_attempt_at_ms"] = next_attempt_at_ms
        with self.ledger.transaction(write=True) as conn:
            done = conn.execute(
                sa.update(webhook_deliveries)
                .where(d.id == delivery_id, d.state == "pending")
                .values(**values)
            )
            return done.rowcount == 1

    # -- reading ---------------------------------------------------------------------------------
    def deliveries(
        self, endpoint_id: str, *, state: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        d = webhook_deliveries.c
        query = sa.select(webhook_deliveries).where(d.endpoint_id == endpoint_id)
        if state is not None:
            query = query.where(d.state == state)
        query = query.order_by(d.event_seq).limit(max(1, min(limit, PAGE_MAX)))
        with self.ledger.transaction() as conn:
            return [_delivery(r) for r in conn.execute(query)]

    def stats(self) -> dict[str, Any]:
        """For /metrics: deliveries by state, attempts made, the outbox cursor, the oldest
        pending delivery's age."""
        d = webhook_deliveries.c
        with self.ledger.transaction() as conn:
            by_state = {
                str(s): int(n)
                for s, n in conn.execute(sa.select(d.state, sa.func.count()).group_by(d.state))
            }
            attempts = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(d.attempts), 0)))
            oldest = conn.execute(
                sa.select(sa.func.min(d.created_at_ms)).where(d.state == "pending")
            ).scalar()
            cursor = conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0)))
            return {
                "by_state": by_state,
                "attempts": int(attempts.scalar_one()),
                "cursor": int(cursor.scalar_one()),
                "oldest_pending_ms": None if oldest is None else int(oldest),
            }
