"""DESIGN invariant 10, from the ledger and the client history, never from the engine: a hold
ends at most once (captured, voided or expired — never two of these), a captured hold was
captured before its expiry (by the store's clock, stamped on each journal line), and every
void the service acknowledged is what the ledger shows for that hold, except a void the
ledger shows as expired (``voids_lost``: the money came back all the same; the checker allows
as many as it allows lost debits, the 20-seed run's seed 16). An acknowledged capture
the ledger does not show is money not taken, the same as an acknowledged debit lost: it is
returned as ``captures_lost`` and counted with invariant 9's acknowledged debits (DESIGN 9:
bounded under a partition that isolates the primary, none otherwise), not here. Seen in the
20-seed chaos run, seed 13: a capture acknowledged with one replica's WAIT, that replica then
stalled and dc1 cut off, and Sentinel promoted the other replica, which lacked it.

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
    """``{"held": bool, "detail": str, "holds": n, "captures_lost": [ids], "voids_lost": [ids]}``."""
    url = read_only(ledger_url)
    if url is None:
        return {"held": False, "detail": f"no ledger at {ledger_url}", "holds": 0,
                "captures_lost": [], "voids_lost": []}  # fmt: skip
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("hold_events"):
                return {"held": True, "detail": "no holds in this ledger", "holds": 0,
                        "captures_lost": [], "voids_lost": []}  # fmt: skip
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

    def unrecorded(f: str, status: str) -> list[str]:
        return sorted(
            str(op.value.get("id"))
            for op in history
            if op.f == f and op.type == "ok" and op.outcome.get("status") == status
            and status not in events.get(str(op.value.get("id")), {})
        )  # fmt: skip

    captures_lost = unrecorded("capture", "captured")
    voids = unrecorded("void", "voided")
    # a void lost whose hold then expired gave the money back as the void would have, and a
    # void lost with its hold (the ledger has no event of that hold: both acknowledged on one
    # replica's WAIT, then Sentinel promoted another; 20-seed run of 2026-12-04, seed 13) held
    # no money: acknowledged writes lost, which the checker bounds as it bounds lost debits; a
    # void lost whose hold was captured, or placed and never ended, broke the promise
    voids_lost = [
        h for h in voids if not events.get(h) or set(events[h]) & set(TERMINAL) == {"expired"}
    ]
    problems = {
        "holds ended twice": twice,
        "holds captured after their expiry": sorted(late),
        "acknowledged voids whose hold was captured or never ended": sorted(
            set(voids) - set(voids_lost)
        ),
    }
    bad = {k: v for k, v in problems.items() if v}
    detail = (
        "; ".join(f"{len(v)} {k} (e.g. {', '.join(v[:EXAMPLES_MAX])})" for k, v in bad.items())
        if bad
        else f"{len(events)} holds, each ended at most once, none captured after its expiry"
    )
    if captures_lost:
        detail += (f"; {len(captures_lost)} acknowledged captures the ledger does not show "
                   "(judged with invariant 9's acknowledged debits)")  # fmt: skip
    if voids_lost:
        detail += (f"; {len(voids_lost)} acknowledged voids the ledger shows as expired or "
                   "lost with their hold (e.g. " + ", ".join(voids_lost[:EXAMPLES_MAX]) + ")")  # fmt: skip
    return {"held": not bad, "detail": detail, "holds": len(events),
            "captures_lost": captures_lost, "voids_lost": voids_lost}  # fmt: skip
