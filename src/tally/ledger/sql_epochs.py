"""Epochs: which Redis dataset generation is current. One current, at most one building."""

from __future__ import annotations

import secrets
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tally.errors import LedgerError, UsageError
from tally.ledger.models import Epoch, EpochKind, EpochStatus
from tally.ledger.schema import epochs
from tally.ledger.sqlutil import now_ms
from tally.store.keys import KeyLayout


class AlreadyInitialised(UsageError):
    hint = "the ledger already has a current epoch: use `tally rebuild` to restore the store"


def new_epoch_id() -> str:
    """Sortable by time, unique by randomness, and free of '/' (the epoch key separator)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"ep-{stamp}-{secrets.token_hex(4)}"


def _epoch(row: Any) -> Epoch:
    return Epoch(row.epoch_id, row.namespace, int(row.shards), EpochStatus(row.status))


def epoch_with_status(conn: Connection, status: EpochStatus, *, lock: bool = False) -> Epoch | None:
    query = sa.select(epochs).where(epochs.c.status == status.value)
    if lock:
        query = query.with_for_update()  # PostgreSQL row lock; SQLite is serialised by IMMEDIATE
    row = conn.execute(query).first()
    return None if row is None else _epoch(row)


def get_epoch(conn: Connection, epoch_id: str) -> Epoch | None:
    row = conn.execute(sa.select(epochs).where(epochs.c.epoch_id == epoch_id)).first()
    return None if row is None else _epoch(row)


def lock_epochs(conn: Connection, *, shared: bool = False) -> tuple[Epoch | None, Epoch | None]:
    """(current, building), locked against a concurrent rebuild until the transaction ends.
    ``shared`` (FOR SHARE): journal batches hold it, so they run side by side while a rebuild,
    which takes it FOR UPDATE, still waits for them and they for it."""
    rows = conn.execute(
        sa.select(epochs)
        .where(epochs.c.status.in_([EpochStatus.current.value, EpochStatus.building.value]))
        .order_by(epochs.c.epoch_id)
        .with_for_update(read=shared)
    ).all()
    found = {row.status: _epoch(row) for row in rows}
    return found.get(EpochStatus.current.value), found.get(EpochStatus.building.value)


def _insert(
    conn: Connection, namespace: str, shards: int, kind: EpochKind, status: EpochStatus
) -> Epoch:
    KeyLayout(namespace, shards)  # validates both
    epoch_id = new_epoch_id()
    conn.execute(
        sa.insert(epochs).values(
            epoch_id=epoch_id,
            namespace=namespace,
            shards=shards,
            kind=kind.value,
            status=status.value,
            started_at_ms=now_ms(),
            finished_at_ms=now_ms() if status is EpochStatus.current else None,
        )
    )
    return Epoch(epoch_id, namespace, shards, status)


def init_epoch(conn: Connection, namespace: str, shards: int) -> Epoch:
    current, _building = lock_epochs(conn)
    if current is not None:
        raise AlreadyInitialised(f"the ledger's current epoch is {current.epoch_id}")
    return _insert(conn, namespace, shards, EpochKind.init, EpochStatus.current)


def begin_rebuild(conn: Connection, namespace: str, shards: int, kind: EpochKind) -> Epoch:
    """A building epoch; an interrupted rebuild with the same layout is resumed, not doubled."""
    _current, building = lock_epochs(conn)
    if building is not None:
        if (building.namespace, building.shards) == (namespace, shards):
            return building
        _retire(conn, building.epoch_id)
    return _insert(conn, namespace, shards, kind, EpochStatus.building)


def _retire(conn: Connection, epoch_id: str) -> None:
    conn.execute(
        sa.update(epochs)
        .where(epochs.c.epoch_id == epoch_id)
        .values(status=EpochStatus.retired.value, finished_at_ms=now_ms())
    )


def finish_rebuild(conn: Connection, epoch_id: str) -> Epoch:
    current, building = lock_epochs(conn)
    if current is not None and current.epoch_id == epoch_id:
        return current  # already finished: a re-run after a crash
    if building is None or building.epoch_id != epoch_id:
        raise LedgerError(
            f"epoch {epoch_id} is not the building epoch", hint="run the rebuild again"
        )
    if current is not None:
        _retire(conn, current.epoch_id)  # first: at most one current at any instant
    conn.execute(
        sa.update(epochs)
        .where(epochs.c.epoch_id == epoch_id)
        .values(status=EpochStatus.current.value, finished_at_ms=now_ms())
    )
    return Epoch(building.epoch_id, building.namespace, building.shards, EpochStatus.current)
