"""The real Lua script agrees with the domain's reference rules on random operation sequences."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally.domain.accounts import Account, AccountStatus
from tally.domain.limits import occurred_bounds_ms
from tally.domain.rules import (
    AccountBook,
    Books,
    WindowClock,
    apply_transfer,
    recharge_id_for,
    recharge_marker,
    rotate_records,
)
from tally.store.keys import KeyLayout
from tally.store.redis_store import RechargeMarker, RedisStore

from .conftest import stamp_epoch

ACCOUNTS = ["a", "b", "c"]
ops = st.lists(
    st.tuples(
        st.sampled_from([f"t{i}" for i in range(12)]),  # few ids: many replays and conflicts
        st.sampled_from(["d", "c"]),
        st.sampled_from([*ACCOUNTS, "missing"]),
        st.integers(min_value=1, max_value=60),
        st.sampled_from(["", "USD", "EUR"]),
    ),
    max_size=40,
)
batching = st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=40)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    operations=ops,
    cuts=batching,
    statuses=st.lists(st.sampled_from(list(AccountStatus)), min_size=3, max_size=3),
)
def test_random_operations_match_the_reference_model(
    store: RedisStore,
    layout: KeyLayout,
    operations: list,
    cuts: list[int],
    statuses: list[AccountStatus],
) -> None:
    store.client.flushall()
    stamp_epoch(store.client, layout)
    model = Books()
    for aid, status in zip(ACCOUNTS, statuses, strict=True):
        store.upsert_account(Account(aid, "USD", 20, status))
        model.accounts[aid] = AccountBook("USD", 20, status)
    pos, cut = 0, 0
    while pos < len(operations):
        size = cuts[cut % len(cuts)]
        batch = operations[pos : pos + size]
        got = store.apply(batch).results
        expected = [apply_transfer(model, *op) for op in batch]
        assert got == expected
        pos, cut = pos + size, cut + 1
    real = store.read_accounts(ACCOUNTS)
    assert {a: s.balance_minor for a, s in real.items() if s} == {
        a: b.balance_minor for a, b in model.accounts.items()
    }


# -- idempotency window extension: records survive one turnover, and are gone after two; the ----
# -- age guard refuses ids without a record by their occurred_at (server clock) ------------------
WINDOW_MS = 3_600_000  # long: the test turns the window over itself, by its generation keys
AGE_MAX_MS, SKEW_MS = occurred_bounds_ms(WINDOW_MS)
#: occurred_at relative to the server's clock read just before the batch: None (now), just
#: inside / just outside the oldest accepted age, just inside / outside the future bound. The
#: "inside" ones keep 60 s of slack for the call; "just outside" is 1 ms (the script's clock
#: reads later than the test's, which only moves the event further out).
OCCURRED = {
    "now": None,
    "old-in": -AGE_MAX_MS + 60_000,
    "old-out": -AGE_MAX_MS - 1,
    "ahead-in": SKEW_MS - 60_000,
    "ahead-out": SKEW_MS + 60_000,
}
windowed_ops = st.lists(
    st.one_of(
        st.just("rotate"),
        st.tuples(
            st.sampled_from([f"t{i}" for i in range(8)]),
            st.sampled_from(["d", "c"]),
            st.sampled_from([*ACCOUNTS, "missing"]),
            st.integers(min_value=1, max_value=60),
            st.sampled_from(["", "USD"]),
            st.sampled_from(sorted(OCCURRED)),
        ),
    ),
    max_size=40,
)


def _server_ms(store: RedisStore) -> int:
    seconds, micros = store.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _at(op: tuple, now_ms: int) -> tuple:
    """The op with its occurred_at made absolute (or left out: the event occurred now)."""
    offset = OCCURRED[op[5]]
    return op[:5] if offset is None else (*op[:5], now_ms + offset)


def _one_id_per_tx_shard(layout: KeyLayout, tag: int) -> list[str]:
    ids: dict[int, str] = {}
    for n in range(10_000):
        tid = f"rot{tag}-{n}"
        ids.setdefault(layout.shard_of(tid), tid)
        if len(ids) == layout.shards:
            return [ids[s] for s in range(layout.shards)]
    raise AssertionError("no id for some shard")


def _turn_over(store: RedisStore, layout: KeyLayout, model: Books, tag: int) -> None:
    """As if a window had passed on the server's clock: every generation key dated 0, then one
    call per tx shard (the script rotates a shard when a call touches it)."""
    for shard in range(layout.shards):
        key = layout.tx_generations_key(shard)
        current = (store.client.get(key) or b"0|0").split(b"|")[0]
        store.client.set(key, current + b"|0")
    rotate_records(model)
    touch = [(tid, "d", "missing", 1, "") for tid in _one_id_per_tx_shard(layout, tag)]
    assert store.apply(touch).results == [apply_transfer(model, *op) for op in touch]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=windowed_ops, cuts=batching)
def test_replays_across_window_turnovers_match_the_reference_model(
    store: RedisStore, layout: KeyLayout, operations: list, cuts: list[int]
) -> None:
    """Inside the window (the current or the previous generation) a replay returns the first
    outcome, whatever its occurred_at; after two turnovers the record is gone from the store
    (``rotate_records``); an id without a record whose occurred_at is just outside the accepted
    range is refused and leaves nothing (no record: a later send inside the range applies)."""
    store.client.flushall()
    stamp_epoch(store.client, layout)
    store.idempotency_window_ms = WINDOW_MS
    model = Books()
    for aid in ACCOUNTS:
        store.upsert_account(Account(aid, "USD", 20))
        model.accounts[aid] = AccountBook("USD", 20, AccountStatus.active)
    pos, cut, turnovers = 0, 0, 0
    while pos < len(operations):
        if operations[pos] == "rotate":
            turnovers += 1
            _turn_over(store, layout, model, turnovers)
            pos += 1
            continue
        size = cuts[cut % len(cuts)]
        batch = []
        while pos < len(operations) and len(batch) < size and operations[pos] != "rotate":
            batch.append(operations[pos])
            pos += 1
        now = _server_ms(store)
        sent = [_at(op, now) for op in batch]
        clock = WindowClock(now, WINDOW_MS)
        expected = [apply_transfer(model, *op, clock=clock) for op in sent]
        assert store.apply(sent).results == expected
        cut += 1
    held = {f.decode() for s in range(layout.shards) for g in (0, 1)
            for f in store.client.hkeys(layout.tx_generation(s, g))}  # fmt: skip
    assert held == set(model.records) | set(model.previous)


# -- auto-recharge extension: the debit that crosses the threshold opens one recharge ------------
thresholds = st.lists(
    st.one_of(st.none(), st.integers(min_value=-10, max_value=40)), min_size=3, max_size=3
)
marker_ops = st.lists(
    st.tuples(
        st.sampled_from(["rule", "close", "open"]),
        st.sampled_from([*ACCOUNTS, "missing"]),
        st.sampled_from(["", "5", "30", "rc-x", "open-own"]),
    ),
    max_size=10,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=ops, cuts=batching, limits=thresholds, markers=marker_ops)
def test_recharge_openings_and_markers_match_the_reference_model(
    store: RedisStore,
    layout: KeyLayout,
    operations: list,
    cuts: list[int],
    limits: list[int | None],
    markers: list[tuple[str, str, str]],
) -> None:
    store.client.flushall()
    stamp_epoch(store.client, layout)
    model = Books()
    for aid, threshold in zip(ACCOUNTS, limits, strict=True):
        store.upsert_account(Account(aid, "USD", 20))
        model.accounts[aid] = AccountBook("USD", 20)
        if threshold is not None:
            value = str(threshold)
            assert store.recharge_marker(aid, "rule", value) == RechargeMarker(
                *recharge_marker(model, aid, "rule", value)
            )
    pos, cut = 0, 0
    while pos < len(operations):
        size = cuts[cut % len(cuts)]
        batch = operations[pos : pos + size]
        got = store.apply(batch).results
        expected = [apply_transfer(model, *op) for op in batch]
        assert got == expected
        op, aid, value = markers[cut % len(markers)] if markers else ("close", "a", "")
        if value == "open-own" and aid in model.accounts:
            value = model.accounts[aid].open_recharge or ""
        if op != "rule" and not value:
            value = "rc-none"
        if op == "rule" and value.startswith("rc"):
            value = ""
        assert store.recharge_marker(aid, op, value) == RechargeMarker(
            *recharge_marker(model, aid, op, value)
        )
        pos, cut = pos + size, cut + 1
    real = store.read_accounts(ACCOUNTS)
    assert {a: s.balance_minor for a, s in real.items() if s} == {
        a: b.balance_minor for a, b in model.accounts.items()
    }
    for aid in ACCOUNTS:
        ro = store.client.hget(layout.account_key(aid), "ro")
        assert (ro.decode() if ro else None) == model.accounts[aid].open_recharge


def test_a_debit_below_the_threshold_opens_exactly_one_recharge_and_journals_it(
    store: RedisStore, layout: KeyLayout
) -> None:
    store.upsert_account(Account("acme", "USD", 0))
    store.apply([("fund", "c", "acme", 1000, "USD")])
    store.recharge_marker("acme", "rule", "500")
    first = store.apply([("u1", "d", "acme", 400, ""), ("u2", "d", "acme", 200, "")]).results
    assert [r.recharge_id for r in first] == [None, recharge_id_for("u2")]
    again = store.apply([("u3", "d", "acme", 100, ""), ("u2", "d", "acme", 200, "")]).results
    assert [r.recharge_id for r in again] == [None, None]  # one open; a replay opens nothing
    journal = store.client.xrange(layout.journal(layout.shard_of("acme")))
    lines = [line for _, f in journal for line in f[b"d"].decode().split("\n")]
    opened = [line for line in lines if line.count("|") == 8]
    assert (
        len(opened) == 1
        and opened[0].startswith("u2|d|acme|200|")
        and opened[0].endswith("|" + recharge_id_for("u2"))
    )
    assert store.recharge_marker("acme", "close", recharge_id_for("u2")).code == 0
    assert store.apply([("u4", "d", "acme", 10, "")]).results[0].recharge_id == recharge_id_for(
        "u4"
    )
