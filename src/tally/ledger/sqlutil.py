"""Small SQL helpers shared by the ledger modules: time, chunking, portable insert-or-ignore."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

T = TypeVar("T")

#: Bound parameters per IN list / executemany chunk (SQLite's limit is 32766 per statement).
CHUNK = 500


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_ignore(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Iterable[str],
    *,
    returning: sa.Column[Any] | None = None,
) -> set[Any]:
    """INSERT ... ON CONFLICT (keys) DO NOTHING. Returns the ``returning`` values of the rows
    actually inserted (empty set when ``returning`` is None)."""
    if not rows:
        return set()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).on_conflict_do_nothing(index_elements=list(keys))
    inserted: set[Any] = set()
    for part in chunks(rows):
        if returning is None:
            conn.execute(stmt, list(part))
        else:
            result = conn.execute(stmt.returning(returning), list(part))
            inserted.update(result.scalars().all())
    return inserted
