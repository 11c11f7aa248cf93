"""Hand-made run directories for the checker's unit tests: every file a run leaves, written
directly, so each test states exactly the anomaly it plants."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

T0 = 1_700_000_000_000  # wall-clock ms of the hand-made run's start

_SCHEMA = """
CREATE TABLE accounts (id TEXT PRIMARY KEY, currency TEXT, credit_limit_minor INTEGER,
    status TEXT, kind TEXT, created_at_ms INTEGER, updated_at_ms INTEGER);
CREATE TABLE transfers (id TEXT PRIMARY KEY, kind TEXT, account_id TEXT, debit_account_id TEXT,
    credit_account_id TEXT, amount_minor INTEGER, currency TEXT, result INTEGER,
    balance_after_minor INTEGER, ts_ms INTEGER);
CREATE TABLE account_events (id INTEGER PRIMARY KEY, account_id TEXT, action TEXT, cause TEXT,
    recharge_id TEXT, at_ms INTEGER);
CREATE TABLE recharges (id TEXT PRIMARY KEY, account_id TEXT, opened_at_ms INTEGER,
    phase TEXT DEFAULT 'opened', outcome_reason TEXT);
CREATE TABLE billing_freeze (id INTEGER PRIMARY KEY, frozen INTEGER);
CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT, source TEXT, account_id TEXT, data TEXT);
CREATE TABLE credit_intents (id TEXT PRIMARY KEY, account_id TEXT, created_at_ms INTEGER);
CREATE TABLE journal_conflicts (id INTEGER PRIMARY KEY, reason TEXT);
"""


@dataclass
class Run:
    """A run being written by hand. Balances follow the transfers added with ``transfer``."""

    dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    gateway: list[dict[str, Any]] = field(default_factory=list)
    transfers: list[tuple[Any, ...]] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    events_sql: list[tuple[str, str]] = field(default_factory=list)
    recharges: list[tuple[str, str, int]] = field(default_factory=list)
    redis: dict[str, dict[str, str]] = field(default_factory=dict)
    tx: dict[str, str] = field(default_factory=dict)
    monitor: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: hold_events rows (hold_id, event, ts_ms, expires_at_ms); none: the ledger has no holds
    hold_events: list[tuple[str, str, int, int | None]] = field(default_factory=list)
    #: write each suspension's outbox event as tally does (False: a decision without its event)
    outbox_events: bool = True
    setup: dict[str, Any] = field(default_factory=lambda: {"currency": "USD", "accounts": []})
    op: int = 0

    def account(self, aid: str, *, card: str | None = None, declines: bool = False) -> None:
        self.statuses[aid] = "active"
        self.redis[aid] = {"cur": "USD", "st": "a", "lim": "0", "bal": "0"}
        self.setup["accounts"].append(
            {"id": aid, "card": card or f"card-{aid}", "declines": declines}
        )

    def transfer(
        self,
        tid: str,
        kind: str,
        aid: str,
        amount: int,
        ts_ms: int,
        *,
        in_redis: bool = True,
        in_ledger: bool = True,
        result: int = 0,
    ) -> None:
        other = "@usage_revenue:USD" if kind == "debit" else "@card_clearing:USD"
        debit, credit = (aid, other) if kind == "debit" else (other, aid)
        if in_ledger:
            self.transfers.append(
                (tid, kind, aid, debit, credit, amount, "USD", result, None, ts_ms)
            )
        if in_redis and result == 0:
            bal = int(self.redis[aid]["bal"]) + (amount if kind == "credit" else -amount)
            self.redis[aid]["bal"] = str(bal)
            self.tx[tid] = f"{kind[0]}|{aid}|{amount}|USD|0|{bal}"

    def client_op(
        self,
        f: str,
        value: dict[str, Any],
        type_: str,
        outcome: dict[str, Any],
        at_ms: int,
        took_ms: int = 2,
    ) -> None:
        self.op += 1
        self.history.append(
            {"op": self.op, "type": "invoke", "f": f, "process": 0, "t_ms": at_ms, "value": value}
        )
        if type_ != "none":
            self.history.append(
                {
                    "op": self.op,
                    "type": type_,
                    "f": f,
                    "process": 0,
                    "t_ms": at_ms + took_ms,
                    "value": outcome,
                }
            )

    def charge(
        self,
        key: str,
        aid: str,
        amount: int,
        at_ms: int,
        *,
        status: str = "succeeded",
        reason: str | None = None,
    ) -> str:
        seq = len(self.gateway) + 1
        cid = f"ch_{seq:010d}"
        card = next(a["card"] for a in self.setup["accounts"] if a["id"] == aid)
        self.gateway.append(
            {
                "seq": seq,
                "kind": "charge",
                "id": cid,
                "idempotency_key": key,
                "card": card,
                "amount_minor": amount,
                "currency": "USD",
                "metadata": {"account": aid},
                "charge_id": None,
                "status": status,
                "reason": reason,
                "response_fault": None,
                "created_ms": at_ms,
            }
        )
        return cid

    def refund(self, charge_id: str, amount: int, at_ms: int) -> None:
        seq = len(self.gateway) + 1
        self.gateway.append(
            {
                "seq": seq,
                "kind": "refund",
                "id": f"re_{seq:010d}",
                "idempotency_key": f"refund-{charge_id}",
                "card": None,
                "amount_minor": amount,
                "currency": "USD",
                "metadata": {},
                "charge_id": charge_id,
                "status": "succeeded",
                "reason": None,
                "response_fault": None,
                "created_ms": at_ms,
            }
        )

    def nodes_sample(self, at_ms: int, **nodes: dict[str, Any]) -> None:
        self.monitor.append({"t_ms": at_ms, "kind": "nodes", "nodes": nodes})

    def write(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.dir / "ledger.sqlite3")
        conn.executescript(_SCHEMA)
        for aid, st in self.statuses.items():
            conn.execute(
                "INSERT INTO accounts VALUES (?, 'USD', 0, ?, 'customer', 0, 0)", (aid, st)
            )
        conn.executemany("INSERT INTO transfers VALUES (?,?,?,?,?,?,?,?,?,?)", self.transfers)
        for aid, cause in self.events_sql:
            row = conn.execute(
                "INSERT INTO account_events (account_id, action, cause, at_ms) "
                "VALUES (?, 'suspended', ?, 0)",
                (aid, cause),
            ).lastrowid
            if self.outbox_events:
                conn.execute(
                    "INSERT INTO events (type, source, account_id, data) "
                    "VALUES ('account.suspended', ?, ?, '{}')",
                    (f"account_event:{row}", aid),
                )
        conn.executemany(
            "INSERT INTO recharges (id, account_id, opened_at_ms) VALUES (?,?,?)", self.recharges
        )
        if self.hold_events:
            conn.execute(
                "CREATE TABLE hold_events (hold_id TEXT, event TEXT, ts_ms INTEGER, "
                "expires_at_ms INTEGER)"
            )
            conn.executemany("INSERT INTO hold_events VALUES (?,?,?,?)", self.hold_events)
        conn.commit()
        conn.close()
        for name, rows in (
            ("history.jsonl", self.history),
            ("gateway.jsonl", self.gateway),
            ("monitor.jsonl", self.monitor),
            ("events.jsonl", self.events),
        ):
            (self.dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        store = {"namespace": "tally", "accounts": self.redis, "tx": self.tx, "epoch_keys": 4}
        (self.dir / "store.json").write_text(json.dumps(store))
        (self.dir / "setup.json").write_text(json.dumps(self.setup))
        return self.dir
