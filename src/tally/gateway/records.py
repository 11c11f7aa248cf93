"""The gateway's own records: every charge and refund it processed, the bank's truth.

One SQLite table, independent of tally's ledger. The simulator keeps it in a file in its data dir
(WAL, ``synchronous=FULL``: a record is durable before the answer leaves); the fake keeps it in
memory. Replays, conflicts and requests refused during an outage are not records: nothing was
processed. Exported as JSONL (one record a line, oldest first) for the lab's ``gateway.jsonl``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tally.errors import ConfigError

DB_FILENAME = "gateway.sqlite3"
PAGE_MAX = 1000
#: Export refuses to walk more than this many records (far above any lab run).
EXPORT_RECORDS_MAX = 50_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('charge', 'refund')),
    id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    card TEXT,
    amount_minor INTEGER NOT NULL,
    currency TEXT,
    metadata TEXT NOT NULL,
    charge_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('succeeded', 'declined')),
    reason TEXT,
    response_fault TEXT,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_velocity ON records (card, kind, status, created_ms);
CREATE INDEX IF NOT EXISTS records_by_charge ON records (charge_id, kind, status);
"""
_COLUMNS = (
    "seq, kind, id, idempotency_key, card, amount_minor, currency, metadata, charge_id, status, "
    "reason, response_fault, created_ms"
)


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    kind: str  # "charge" | "refund"
    id: str  # ch_... / re_...
    idempotency_key: str
    card: str | None  # for a refund: the card of its charge (None when the charge is unknown)
    amount_minor: int
    currency: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    charge_id: str | None = None  # refunds only: the charge it refunds
    status: str = "succeeded"  # "succeeded" | "declined"
    reason: str | None = None
    response_fault: str | None = None  # "drop" / "delay": the first response was lost on purpose
    created_ms: int = 0

    @property
    def created_at(self) -> str:
        moment = datetime.fromtimestamp(self.created_ms / 1000, tz=UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def to_json_dict(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at}

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Record:
        fields = {k: v for k, v in data.items() if k != "created_at"}
        return cls(**fields)


def _row_to_record(row: tuple[Any, ...]) -> Record:
    (seq, kind, id_, key, card, amount, currency, meta, charge_id, status, reason, fault, ms) = row
    return Record(
        seq, kind, id_, key, card, amount, currency, json.loads(meta), charge_id, status, reason,
        fault, ms,
    )  # fmt: skip


class RecordStore:
    """Thread-safe: one connection behind a lock (the simulator is one event loop anyway)."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 5000")
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open gateway records {self.path}: {exc}") from exc

    @classmethod
    def in_dir(cls, data_dir: Path) -> RecordStore:
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(data_dir / DB_FILENAME)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def by_key(self, idempotency_key: str) -> Record | None:
        return self._one("WHERE idempotency_key = ?", (idempotency_key,))

    def by_id(self, object_id: str) -> Record | None:
        return self._one("WHERE id = ?", (object_id,))

    def _one(self, where: str, args: tuple[Any, ...]) -> Record | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM records {where}", args).fetchone()
        return _row_to_record(row) if row is not None else None

    def count_succeeded_charges(self, card: str, since_ms: int) -> int:
        sql = (
            "SELECT COUNT(*) FROM records WHERE card = ? AND kind = 'charge' "
            "AND status = 'succeeded' AND created_ms >= ?"
        )
        with self._lock:
            return int(self._conn.execute(sql, (card, since_ms)).fetchone()[0])

    def refunded_minor(self, charge_id: str) -> int:
        sql = (
            "SELECT COALESCE(SUM(amount_minor), 0) FROM records WHERE charge_id = ? "
            "AND kind = 'refund' AND status = 'succeeded'"
        )
        with self._lock:
            return int(self._conn.execute(sql, (charge_id,)).fetchone()[0])

    def insert(self, draft: Record) -> Record:
        """Commit a new record; its ``seq`` and ``id`` are assigned here (``ch_``/``re_`` + seq).
        Raises ``sqlite3.IntegrityError`` if the key exists (callers check under their lock)."""
        prefix = "ch" if draft.kind == "charge" else "re"
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            seq = self._conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM records").fetchone()[0]
            record = _with_identity(draft, seq, f"{prefix}_{seq:010d}")
            self._conn.execute(
                f"INSERT INTO records ({_COLUMNS}) VALUES ({', '.join('?' * 13)})",
                _record_row(record),
            )
        return record

    def page(self, after_seq: int = 0, limit: int = PAGE_MAX) -> list[Record]:
        limit = max(1, min(limit, PAGE_MAX))
        sql = f"SELECT {_COLUMNS} FROM records WHERE seq > ? ORDER BY seq LIMIT ?"
        with self._lock:
            rows = self._conn.execute(sql, (after_seq, limit)).fetchall()
        return [_row_to_record(row) for row in rows]

    def iter_all(self) -> Iterator[Record]:
        after = 0
        for _ in range(EXPORT_RECORDS_MAX // PAGE_MAX + 1):
            page = self.page(after)
            if not page:
                return
            yield from page
            after = page[-1].seq
        raise ConfigError(f"more than {EXPORT_RECORDS_MAX} gateway records: refusing to walk them")


def _with_identity(draft: Record, seq: int, object_id: str) -> Record:
    data = asdict(draft)
    data.update(seq=seq, id=object_id)
    return Record(**data)


def _record_row(r: Record) -> tuple[Any, ...]:
    meta = json.dumps(r.metadata, sort_keys=True)
    return (
        r.seq, r.kind, r.id, r.idempotency_key, r.card, r.amount_minor, r.currency, meta,
        r.charge_id, r.status, r.reason, r.response_fault, r.created_ms,
    )  # fmt: skip


def write_jsonl(records: Iterator[Record], out: TextIO) -> int:
    count = 0
    for record in records:
        out.write(json.dumps(record.to_json_dict(), sort_keys=True) + "\n")
        count += 1
    return count


def open_records(data_dir: Path) -> RecordStore:
    """The records of a simulator's data dir, which must exist (running or not: WAL readers
    never block the simulator)."""
    db = Path(data_dir) / DB_FILENAME
    if not db.is_file():
        raise ConfigError(f"no gateway records at {db}")
    return RecordStore(db)


def export_jsonl(data_dir: Path, out_path: Path) -> int:
    """Write every record of a simulator's data dir to ``out_path``; returns how many."""
    store = open_records(data_dir)
    try:
        with open(out_path, "w", encoding="utf-8") as out:
            return write_jsonl(store.iter_all(), out)
    finally:
        store.close()
