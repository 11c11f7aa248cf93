"""Bounds that keep every amount exact everywhere it travels.

Redis Lua numbers are IEEE doubles: integers are exact only up to 2^53. Every amount and every
balance is kept far below that, so a sum of a whole batch of maximal amounts is still exact.
Constants that depend on each other are checked here, at import time.
"""

from __future__ import annotations

LUA_EXACT_INT_MAX = 2**53

#: Largest single transfer, in minor units (10^13 cents is 100 billion dollars).
AMOUNT_MINOR_MAX = 10**13
#: Largest absolute balance and credit limit, in minor units.
BALANCE_MINOR_MAX = 10**15
CREDIT_LIMIT_MINOR_MAX = BALANCE_MINOR_MAX

#: Transfers in one store script call, and in one ``debit_many`` request.
SCRIPT_BATCH_MAX = 2000
BATCH_MAX = 100_000

#: Ids are short printable tokens: they become parts of Redis keys and journal lines.
ID_LEN_MAX = 64

#: Journal entries per shard the store accepts before it refuses writes (drainer far behind).
JOURNAL_ENTRIES_MAX = 200_000

#: The drainer's replica fence: replicas it may require, and WAIT's timeout per round (0 would
#: mean "block forever" to Redis, so the range starts at 1).
DRAIN_REPLICAS_MAX = 32
DRAIN_FENCE_TIMEOUT_MS_DEFAULT = 500
DRAIN_FENCE_TIMEOUT_MS_MAX = 10_000
#: Groups of shards the drainer settles at once, each in its own ledger transaction (PostgreSQL;
#: SQLite has one writer, so always 1 there): 2 on this 2-core machine settled 112-140k/s into
#: PostgreSQL, 1 settled 90-101k/s (README, "Sustained"), hence 2 by default.
DRAIN_WORKERS_DEFAULT = 2
DRAIN_WORKERS_MAX = 8

#: How long a transfer id's record (what makes a replay exact) is kept in Redis, at most; the
#: store's window is a setting (``Settings.idempotency_window_ms``, 0 = forever).
IDEMPOTENCY_WINDOW_MS_MAX = 366 * 86_400_000
#: The default (``TALLY_IDEMPOTENCY_WINDOW_S``) and the shortest a setting may ask for: below a
#: minute the future bound (window / 14) would refuse ordinary client clock drift.
IDEMPOTENCY_WINDOW_MS_DEFAULT = 7 * 86_400_000
IDEMPOTENCY_WINDOW_MS_MIN = 60_000
#: The window's age guard (README, "Idempotency window"): with a window W the store accepts a
#: transfer only if its occurred_at is in [server now - (W - margin), server now + skew], with
#: margin = W / OCCURRED_MARGIN_DIVISOR (1 day of 7) and skew = min(OCCURRED_SKEW_MS_MAX,
#: margin / 2). Safety needs margin > skew + any step of the Redis servers' clocks (failover).
OCCURRED_MARGIN_DIVISOR = 7
OCCURRED_SKEW_MS_MAX = 300_000
#: occurred_at_ms bounds (epoch ms): 1970 .. year 9999, exact in a Lua double.
OCCURRED_AT_MS_MAX = 253_402_300_799_999


def occurred_bounds_ms(window_ms: int) -> tuple[int, int]:
    """(oldest accepted age, furthest accepted future) of occurred_at for a window; (0, 0) for
    a window of 0 (forever: no age guard, every record is kept)."""
    if window_ms <= 0:
        return 0, 0
    margin_ms = window_ms // OCCURRED_MARGIN_DIVISOR
    skew_ms = min(OCCURRED_SKEW_MS_MAX, margin_ms // 2)
    return window_ms - margin_ms, skew_ms


# The scripts check every step against the bounds, so the largest intermediate value is a
# balance at its bound plus or minus one maximal amount (or a credit limit); it must be exact.
if not BALANCE_MINOR_MAX + max(AMOUNT_MINOR_MAX, CREDIT_LIMIT_MINOR_MAX) < LUA_EXACT_INT_MAX // 4:
    raise ImportError("limits: balance + amount would not be exact in a Lua double")
if not OCCURRED_AT_MS_MAX < LUA_EXACT_INT_MAX // 4:
    raise ImportError("limits: occurred_at_ms would not be exact in a Lua double")
if not 1 <= DRAIN_FENCE_TIMEOUT_MS_DEFAULT <= DRAIN_FENCE_TIMEOUT_MS_MAX:
    raise ImportError("limits: the default drain fence timeout is out of its range")
if not AMOUNT_MINOR_MAX <= BALANCE_MINOR_MAX:
    raise ImportError("limits: a single amount must fit in a balance")
