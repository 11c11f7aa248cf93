"""Epochs: which Redis dataset generation is current. One current, at most one building.

Inside the current (deployment) epoch each logical shard may have an epoch of its own
(``shard_epochs``, written by a one-shard rebuild on a Redis Cluster): one current and at most
one building per shard. A shard without one is at the deployment epoch; a whole rebuild starts a
new deployment epoch and retires every shard epoch of the old one."""

from __future__ import annotations

import secrets
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tally.errors import LedgerError, UsageError
from tally.ledger.models import Epoch, EpochKind, EpochStatus, EpochView
from tally.ledger.schema import epochs, shard_epochs
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


def epoch_known(conn: Connection, epoch_id: str) -> bool:
    """A deployment epoch or one shard's own epoch of that id exists."""
    if get_epoch(conn, epoch_id) is not None:
        return True
    query = sa.select(shard_epochs.c.shard_epoch_id).where(
        shard_epochs.c.shard_epoch_id == epoch_id
    )
    return conn.execute(query).first() is not None


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
        _retire_shard_epochs(conn, current.epoch_id)  # every shard is at the new epoch
    conn.execute(
        sa.update(epochs)
        .where(epochs.c.epoch_id == epoch_id)
        .values(status=EpochStatus.current.value, finished_at_ms=now_ms())
    )
    return Epoch(building.epoch_id, building.namespace, building.shards, EpochStatus.current)


# -- one shard's own epoch (a one-shard rebuild on a Redis Cluster) ---------------------------------
def _retire_shard_epochs(conn: Connection, epoch_id: str) -> None:
    conn.execute(
        sa.update(shard_epochs)
        .where(shard_epochs.c.epoch_id == epoch_id, shard_epochs.c.status != "retired")
        .values(status=EpochStatus.retired.value, finished_at_ms=now_ms())
    )


def shard_epoch_ids(conn: Connection, epoch: Epoch) -> tuple[str, ...]:
    """Each shard's epoch id inside ``epoch``: its current shard epoch, else the epoch's own."""
    rows = conn.execute(
        sa.select(shard_epochs.c.shard, shard_epochs.c.shard_epoch_id).where(
            shard_epochs.c.epoch_id == epoch.epoch_id,
            shard_epochs.c.status == EpochStatus.current.value,
        )
    ).all()
    own = {int(r.shard): str(r.shard_epoch_id) for r in rows}
    return tuple(own.get(s, epoch.epoch_id) for s in range(epoch.shards))


def epoch_view(conn: Connection) -> EpochView | None:
    """The current epoch with every shard's id."""
    current = epoch_with_status(conn, EpochStatus.current)
    if current is None:
        return None
    return EpochView(current, shard_epoch_ids(conn, current))


def building_shard_epoch(conn: Connection, epoch_id: str, shard: int) -> str | None:
    row = conn.execute(
        sa.select(shard_epochs.c.shard_epoch_id).where(
            shard_epochs.c.epoch_id == epoch_id,
            shard_epochs.c.shard == shard,
            shard_epochs.c.status == EpochStatus.building.value,
        )
    ).first()
    return None if row is None else str(row.shard_epoch_id)


def begin_shard_rebuild(conn: Connection, shard: int) -> tuple[EpochView, str]:
    """A building epoch for ``shard`` only (an interrupted one is resumed, not doubled); with
    the current view (every shard's id before it). Refused while a whole rebuild is building."""
    current, building = lock_epochs(conn)  # FOR UPDATE: journal batches wait, as for a rebuild
    if current is None:
        raise UsageError("the ledger has no current epoch: initialise the deployment first")
    if building is not None:
        raise UsageError(
            f"a whole-store rebuild (epoch {building.epoch_id}) is in progress: finish it "
            "(run `tally rebuild` again) before rebuilding one shard"
        )
    if not 0 <= shard < current.shards:
        raise UsageError(f"shard must be 0..{current.shards - 1}, got {shard}")
    view = EpochView(current, shard_epoch_ids(conn, current))
    resumed = building_shard_epoch(conn, current.epoch_id, shard)
    if resumed is not None:
        return view, resumed
    shard_epoch_id = new_epoch_id()
    conn.execute(
        sa.insert(shard_epochs).values(
            shard_epoch_id=shard_epoch_id,
            epoch_id=current.epoch_id,
            shard=shard,
            status=EpochStatus.building.value,
            started_at_ms=now_ms(),
            finished_at_ms=None,
        )
    )
    return view, shard_epoch_id


def finish_shard_rebuild(conn: Connection, shard_epoch_id: str) -> EpochView:
    """The shard's building epoch becomes its current one (the old one retired first)."""
    current, _building = lock_epochs(conn)
    row = conn.execute(
        sa.select(shard_epochs).where(shard_epochs.c.shard_epoch_id == shard_epoch_id)
    ).first()
    if current is None or row is None or row.epoch_id != current.epoch_id:
        raise LedgerError(
            f"shard epoch {shard_epoch_id} is not of the current epoch",
            hint="run the rebuild again",
        )
    if row.status == EpochStatus.building.value:
        conn.execute(
            sa.update(shard_epochs)
            .where(
                shard_epochs.c.epoch_id == current.epoch_id,
                shard_epochs.c.shard == row.shard,
                shard_epochs.c.status == EpochStatus.current.value,
            )
            .values(status=EpochStatus.retired.value, finished_at_ms=now_ms())
        )
        conn.execute(
            sa.update(shard_epochs)
            .where(shard_epochs.c.shard_epoch_id == shard_epoch_id)
            .values(status=EpochStatus.current.value, finished_at_ms=now_ms())
        )
    elif row.status != EpochStatus.current.value:
        raise LedgerError(f"shard epoch {shard_epoch_id} was retired", hint="run the rebuild again")
    return EpochView(current, shard_epoch_ids(conn, current))
