"""DESIGN invariant 11, from the ledger alone: every decision a dependent must know has exactly
one event in the outbox, and no event lacks its decision.

Like ``checker.py`` it never asks the engine: plain read-only SQL over the ledger's tables.

Decisions and their events (``events.source`` names the decision):

    account_events row n (suspended | reinstated)   account.<action>      account_event:<n>
    recharge r in phase succeeded                    recharge.succeeded    recharge:<r>
    recharge r in phase declined                     recharge.failed       recharge:<r>
    recharge r skipped with outcome refunded:…       recharge.refunded     recharge:<r>
    billing_freeze row n (frozen true | false)       billing.(un)frozen    freeze:<n>

An operator's status change (API / CLI) has no decision row of its own: its event (source
NULL, ``data.cause``) must name an account that exists. Other event types (``recharge.waiting``,
``balance.low``, ``hold.expired``) are not decisions this rule judges.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROWS_MAX = 2_000_000
NAME = "11_one_event_per_decision"
EXAMPLES_MAX = 5


def _rows(conn: sa.Connection, sql: str) -> list[Any]:
    return list(conn.execute(sa.text(f"{sql} LIMIT {ROWS_MAX}")))


def _expected(conn: sa.Connection) -> dict[str, str]:
    """source -> the event type its decision must have."""
    want: dict[str, str] = {}
    for row in _rows(conn, "SELECT id, action FROM account_events"):
        want[f"account_event:{int(row.id)}"] = f"account.{row.action}"
    outcomes = {"succeeded": "recharge.succeeded", "declined": "recharge.failed"}
    for row in _rows(
        conn, "SELECT id, phase FROM recharges WHERE phase IN ('succeeded', 'declined')"
    ):
        want[f"recharge:{row.id}"] = outcomes[row.phase]
    for row in _rows(
        conn,
        "SELECT id FROM recharges WHERE phase = 'skipped' AND outcome_reason LIKE 'refunded:%'",
    ):
        want[f"recharge:{row.id}"] = "recharge.refunded"
    for row in _rows(conn, "SELECT id, frozen FROM billing_freeze"):
        want[f"freeze:{int(row.id)}"] = "billing.frozen" if row.frozen else "billing.unfrozen"
    return want


JUDGED = (
    "account.suspended",
    "account.reinstated",
    "account.closed",
    "recharge.succeeded",
    "recharge.failed",
    "recharge.refunded",
    "billing.frozen",
    "billing.unfrozen",
)


def read_only(ledger_url: str) -> str | None:
    """The URL to read a run's ledger with: a SQLite file read-only (None when it is missing:
    reported by the caller, never created), any other URL as it is."""
    if not ledger_url.startswith("sqlite:///"):
        return ledger_url
    path = Path(ledger_url.removeprefix("sqlite:///"))
    return f"sqlite:///file:{path}?mode=ro&uri=true" if path.is_file() else None


def check_events(ledger_url: str) -> dict[str, Any]:
    """``{"held": bool, "detail": str, "decisions": n, "events": n}`` for ``ledger_url``."""
    url = read_only(ledger_url)
    if url is None:
        return {"held": False, "detail": f"no ledger at {ledger_url}", "decisions": 0, "events": 0}
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("events"):
                return {"held": False, "detail": "the ledger has no events outbox", "decisions": 0}
            want = _expected(conn)
            judged = ", ".join(f"'{t}'" for t in JUDGED)
            found = _rows(
                conn, f"SELECT type, source, account_id, data FROM events WHERE type IN ({judged})"
            )
            accounts = {r.id for r in _rows(conn, "SELECT id FROM accounts")}
    finally:
        engine.dispose()
    return _judge(want, found, accounts)


def _judge(want: dict[str, str], found: list[Any], accounts: set[str]) -> dict[str, Any]:
    per_source = Counter(r.source for r in found if r.source is not None)
    types = {r.source: r.type for r in found if r.source is not None}
    missing = sorted(s for s in want if per_source[s] == 0)
    twice = sorted(s for s, n in per_source.items() if n > 1)
    wrong = sorted(s for s, t in types.items() if s in want and want[s] != t)
    orphans = sorted(s for s in per_source if s not in want)
    unowned = [
        r.type
        for r in found
        if r.source is None
        and (
            not r.type.startswith("account.")
            or r.account_id not in accounts
            or "cause" not in json.loads(r.data)
        )
    ]
    problems = {
        "decisions without an event": missing,
        "decisions with more than one event": twice,
        "events of the wrong type": wrong,
        "events without their decision": orphans + unowned,
    }
    bad = {k: v for k, v in problems.items() if v}
    detail = (
        "; ".join(f"{len(v)} {k} (e.g. {', '.join(v[:EXAMPLES_MAX])})" for k, v in bad.items())
        if bad
        else f"{len(want)} decisions, each with exactly one event; {len(found)} events judged"
    )
    return {"held": not bad, "detail": detail, "decisions": len(want), "events": len(found)}
