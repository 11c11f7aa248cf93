"""DESIGN invariant 10, from the ledger and the client history, never from the engine: a hold
ends at most once (captured, voided or expired — never two of these), a captured hold was
captured before its expiry (by the store's clock, stamped on each journal line), and every
capture or void the service acknowledged is what the ledger shows for that hold.

Plain read-only SQL over ``holds`` and ``hold_events`` (a ledger without them: no hold was ever
placed, nothing to judge).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa

from tally.lab.checker_events import read_only
from tally.lab.history import Operation

NAME = "10_hold_ends_once"
ROWS_MAX = 2_000_000
EXAMPLES_MAX = 5
TERMINAL = ("captured", "voided", "expired")


def check_holds(ledger_url: str, history: list[Operation]) -> dict[str, Any]:
    """``{"held": bool, "detail": str, "holds": n}``."""
    url = read_only(ledger_url)
    if url is None:
        return {"held": False, "detail": f"no ledger at {ledger_url}", "holds": 0}
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("hold_events"):
                return {"held": True, "detail": "no holds in this ledger", "holds": 0}
            rows = list(
                conn.execute(
                    sa.text(
                        "SELECT hold_id, event, ts_ms, expires_at_ms FROM hold_events "
                        f"LIMIT {ROWS_MAX}"
                    )
                )
            )
    finally:
        engine.dispose()
    return judge(rows, history)


def judge(rows: list[Any], history: list[Operation]) -> dict[str, Any]:
    events: dict[str, dict[str, tuple[int, int | None]]] = defaultdict(dict)
    for r in rows:
        events[r.hold_id][r.event] = (int(r.ts_ms), r.expires_at_ms)
    twice = sorted(h for h, e in events.items() if sum(t in e for t in TERMINAL) > 1)
    late = []
    for h, e in events.items():
        placed, captured = e.get("placed"), e.get("captured")
        if placed and captured and placed[1] is not None and captured[0] > int(placed[1]):
            late.append(h)
    want = {"capture": "captured", "void": "voided"}
    unrecorded = sorted(
        str(op.value.get("id"))
        for op in history
        if op.f in want and op.type == "ok" and op.outcome.get("status") == want[op.f]
        and want[op.f] not in events.get(str(op.value.get("id")), {})
    )  # fmt: skip
    problems = {
        "holds ended twice": twice,
        "holds captured after their expiry": sorted(late),
        "acknowledged captures/voids the ledger does not show": unrecorded,
    }
    bad = {k: v for k, v in problems.items() if v}
    detail = (
        "; ".join(f"{len(v)} {k} (e.g. {', '.join(v[:EXAMPLES_MAX])})" for k, v in bad.items())
        if bad
        else f"{len(events)} holds, each ended at most once, none captured after its expiry"
    )
    return {"held": not bad, "detail": detail, "holds": len(events)}
