"""Engines for the ledger database: SQLite (WAL, busy timeout) or PostgreSQL (psycopg 3).

SQLite: pysqlite's own implicit transactions are switched off so that tally controls BEGIN:
reads start a deferred transaction (a consistent snapshot in WAL mode), writes start with
``BEGIN IMMEDIATE`` so two writers queue on the busy timeout instead of failing on upgrade.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from tally.ledger.urls import normalise_url

SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 5
PG_STATEMENT_TIMEOUT_MS = 60_000
PG_LOCK_TIMEOUT_MS = 15_000
PG_POOL_SIZE = 5
PG_POOL_OVERFLOW = 5
PG_POOL_TIMEOUT_S = 10

#: Execution option naming a transaction that will write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "tally_write"


def is_sqlite_memory(url: str) -> bool:
    database = sa.engine.make_url(url).database
    return database in (None, "", ":memory:")


def create_ledger_engine(url: str) -> Engine:
    normalised = normalise_url(url)
    if normalised.startswith("sqlite"):
        return _sqlite_engine(normalised)
    return sa.create_engine(
        normalised,
        pool_size=PG_POOL_SIZE,
        max_overflow=PG_POOL_OVERFLOW,
        pool_timeout=PG_POOL_TIMEOUT_S,
        pool_pre_ping=True,
        pool_recycle=1800,
        isolation_level="READ COMMITTED",
        connect_args={
            "connect_timeout": PG_CONNECT_TIMEOUT_S,
            "options": (
                f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS} "
                f"-c lock_timeout={PG_LOCK_TIMEOUT_MS}"
            ),
        },
    )


def _sqlite_engine(url: str) -> Engine:
    kwargs: dict[str, Any] = {
        "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    }
    if is_sqlite_memory(url):
        kwargs["poolclass"] = StaticPool  # one shared in-memory database
    engine = sa.create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # tally emits BEGIN itself, see below
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=FULL")  # the ledger of record: no lost commits
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = bool(conn.get_execution_options().get(WRITE_OPTION))
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
