"""The idempotency window: transfer-id records live in two generations per tx shard, dropped
whole, so Redis memory is bounded by rate x window instead of growing with history."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tally.config import Settings, parse_window_s
from tally.domain.limits import IDEMPOTENCY_WINDOW_MS_MAX, occurred_bounds_ms
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.errors import ConfigError
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore

from .conftest import open_account

BYTES_PER_RECORD_MAX = 120


def _records(store: RedisStore, layout: KeyLayout) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for shard in range(layout.shards):
        for generation in (0, 1):
            raw = store.client.hgetall(layout.tx_generation(shard, generation))
            out.update({k.decode(): v for k, v in raw.items()})
    return out


def _tx_bytes(store: RedisStore, layout: KeyLayout) -> int:
    keys = [layout.tx_generation(s, g) for s in range(layout.shards) for g in (0, 1)]
    return sum(int(store.client.memory_usage(k, samples=0) or 0) for k in keys)


def _date_every_generation_back(store: RedisStore, layout: KeyLayout) -> None:
    """As if a whole window had passed on the server's clock."""
    for shard in range(layout.shards):
        key = layout.tx_generations_key(shard)
        current = (store.client.get(key) or b"0|0").split(b"|")[0]
        store.client.set(key, current + b"|0")


def test_the_servers_clock_turns_the_window_over_and_replays_stay_exact_inside_it(
    store: RedisStore, layout: KeyLayout
) -> None:
    open_account(store, "acme", limit=1000)
    store.idempotency_window_ms = 400
    first = store.apply([("t1", "d", "acme", 7, "")]).results[0]
    time.sleep(0.45)
    store.apply([("t2", "d", "acme", 1, "")])  # t1's generation becomes the previous one
    again = store.apply([("t1", "d", "acme", 7, "")]).results[0]
    assert again == first._replace(replayed=True)  # the whole first outcome, balance included
    assert "t1" in _records(store, layout)
    time.sleep(0.45)
    store.apply([(f"t3-{s}", "d", "acme", 1, "") for s in range(40)])  # touches every tx shard
    assert "t1" not in _records(store, layout)  # dropped with its generation, whole


def test_memory_is_flat_once_the_window_is_full(store: RedisStore, layout: KeyLayout) -> None:
    """Six windows of the same traffic: records and used_memory stop growing after two (the
    current and the previous generation); each live record costs at most 120 bytes."""
    open_account(store, "acme", limit=10**12)
    store.idempotency_window_ms = 3_600_000  # turned over by the test, not by waiting
    per_window, memory, live = 4000, [], []
    for window in range(6):
        for start in range(0, per_window, 1000):
            batch = [(f"w{window}-{i:06d}", "d", "acme", 1, "") for i in range(start, start + 1000)]
            store.apply(batch)
        for key in layout.journals():  # what the drainer does once the ledger has the lines
            store.client.xtrim(key, maxlen=0)
        live.append(len(_records(store, layout)))
        memory.append(int(store.client.info("memory")["used_memory"]))
        if window == 3:
            per_record = _tx_bytes(store, layout) / live[-1]
            assert per_record <= BYTES_PER_RECORD_MAX, per_record
        _date_every_generation_back(store, layout)
    assert live[:2] == [per_window, 2 * per_window]
    assert live[2:] == [2 * per_window] * 4  # the window is full: the oldest drop whole
    steady = memory[2:]
    assert max(steady) - min(steady) < 0.1 * (memory[1] - memory[0]) * 2


def test_memory_per_live_record_stays_bounded_through_a_record_hash_doubling(
    store: RedisStore, layout: KeyLayout
) -> None:
    """A record hash that fills its bucket array doubles it and moves the entries over one
    bucket per command on that key, so for a while both arrays exist: the most a record costs.
    Sampled every 250 records per hash through several doublings (up to ~10k records per hash),
    each live record stays within the bound at every sample, the transient included (it is
    seen: the costliest sample is well above the cheapest; ``MEMORY USAGE`` counts both bucket
    arrays). The bench's 122 B "growth per transfer" over a 3-minute run was such a moment
    charged to the window's transfers alone (README, "Sustained")."""
    open_account(store, "acme", limit=10**12)
    per_record = []
    for start in range(0, 40_000, 1000):
        store.apply([(f"s{start + i:07d}", "d", "acme", 1, "") for i in range(1000)])
        per_record.append(_tx_bytes(store, layout) / (start + 1000))
    assert max(per_record) <= BYTES_PER_RECORD_MAX, per_record
    assert max(per_record[8:]) - min(per_record[8:]) > 8, per_record  # a doubling was sampled


# -- the age guard: outside the window a transfer is refused by its occurred_at, never applied ---
GUARDED_WINDOW_MS = 70_000  # margin 10 s: accepted ages up to 60 s; future up to 5 s
AGE_MAX_MS, SKEW_MS = occurred_bounds_ms(GUARDED_WINDOW_MS)
SLACK_MS = 2_000  # the "inside" probes stay inside while the call takes less than this


def _server_ms(store: RedisStore) -> int:
    seconds, micros = store.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _journal_lines(store: RedisStore, layout: KeyLayout) -> int:
    return sum(int(store.client.xlen(key)) for key in layout.journals())


def test_the_window_bounds_leave_a_margin_above_the_future_skew() -> None:
    """What the safety argument needs (README): accepted age + future skew < window."""
    assert (AGE_MAX_MS, SKEW_MS) == (60_000, 5_000)
    for window_ms in (1_000, 60_000, 604_800_000, IDEMPOTENCY_WINDOW_MS_MAX):
        age_max_ms, skew_ms = occurred_bounds_ms(window_ms)
        assert 0 < age_max_ms + skew_ms < window_ms
    assert occurred_bounds_ms(0) == (0, 0)


def test_an_event_older_than_the_window_allows_is_refused_and_writes_nothing(
    store: RedisStore, layout: KeyLayout
) -> None:
    """Just outside (1 ms older than accepted, by the server's clock) and too far ahead: a
    definite refusal with the account's balance, no record, no journal line, no balance change;
    just inside on both sides: applied. Without the guard in transfer.lua the two refusals are
    applied (ok) and the test fails at the first assertion."""
    open_account(store, "acme", limit=1000)
    store.idempotency_window_ms = GUARDED_WINDOW_MS
    store.apply([("warm", "d", "acme", 1, "")])  # starts the generations' clock
    lines = _journal_lines(store, layout)
    now = _server_ms(store)
    refused = store.apply(
        [
            ("old", "d", "acme", 5, "", now - AGE_MAX_MS - 1),
            ("ahead", "d", "acme", 5, "", now + SKEW_MS + SLACK_MS),
        ]
    ).results
    assert refused == [
        TransferResult("old", Result.occurred_outside_window, -1),
        TransferResult("ahead", Result.occurred_in_future, -1),
    ]
    assert {"old", "ahead"}.isdisjoint(_records(store, layout))
    assert _journal_lines(store, layout) == lines
    now = _server_ms(store)
    inside = store.apply(
        [
            ("edge-old", "d", "acme", 5, "", now - AGE_MAX_MS + SLACK_MS),
            ("edge-ahead", "d", "acme", 5, "", now + SKEW_MS - SLACK_MS),
        ]
    ).results
    assert inside == [
        TransferResult("edge-old", Result.ok, -6),
        TransferResult("edge-ahead", Result.ok, -11),
    ]


def test_an_exact_replay_returns_the_first_outcome_whatever_its_occurred_at(
    store: RedisStore, layout: KeyLayout
) -> None:
    """The record is looked up before the age: a replay (the record still there) answers its
    first outcome even when its occurred_at is now outside the accepted range, or is absent, and
    a conflicting replay still answers its conflict. With the age checked first the replays
    below would be refused (occurred_outside_window) and the test fails."""
    open_account(store, "acme", limit=1000)
    store.idempotency_window_ms = GUARDED_WINDOW_MS
    now = _server_ms(store)
    first = store.apply([("t1", "d", "acme", 7, "", now - AGE_MAX_MS + SLACK_MS)]).results[0]
    assert first == TransferResult("t1", Result.ok, -7)
    again = store.apply(
        [
            ("t1", "d", "acme", 7, "", now - AGE_MAX_MS - 1),
            ("t1", "d", "acme", 7, "", 0),
            ("t1", "d", "acme", 7, ""),
            ("t1", "d", "acme", 8, "", 0),
        ]
    ).results
    assert again == [first._replace(replayed=True)] * 3 + [
        TransferResult("t1", Result.exists_with_different_amount, None, True)
    ]
    assert store.read_accounts(["acme"])["acme"].balance_minor == -7  # type: ignore[union-attr]


def test_a_replay_after_its_record_is_dropped_is_refused_never_applied_twice(
    store: RedisStore, layout: KeyLayout
) -> None:
    """The whole defence on the server's real clock with a short window (1.4 s): a debit, then
    calls that turn the window over until its record is gone; at every step the same debit
    with its original occurred_at either replays its first outcome (record still there) or is
    refused (occurred_outside_window) -- the balance moves once. Without the guard, the replay
    after the record is dropped debits again and the test fails."""
    open_account(store, "acme", limit=1000)
    window_ms = 1_400
    store.idempotency_window_ms = window_ms
    occurred = _server_ms(store)
    first = store.apply([("t1", "d", "acme", 7, "", occurred)]).results[0]
    assert first == TransferResult("t1", Result.ok, -7)
    answers, ticks = set(), 0
    for step in range(40):  # bounded: the record is gone after two turnovers (about 3 windows)
        time.sleep(window_ms / 4000)
        store.apply([(f"tick-{step}-{s}", "c", "acme", 1, "") for s in range(40)])
        ticks += 40  # touches every tx shard, so each one turns over when its window is up
        gone = "t1" not in _records(store, layout)
        again = store.apply([("t1", "d", "acme", 7, "", occurred)]).results[0]
        if gone:
            assert again == TransferResult("t1", Result.occurred_outside_window, ticks - 7)
            answers.add(again.result)
            break
        assert again == first._replace(replayed=True)
        answers.add(again.result)
    assert answers == {Result.ok, Result.occurred_outside_window}, answers
    assert store.read_accounts(["acme"])["acme"].balance_minor == ticks - 7  # type: ignore[union-attr]


def test_the_window_comes_from_the_environment_seven_days_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def resolved(text: str | None) -> int:
        if text is None:
            monkeypatch.delenv("TALLY_IDEMPOTENCY_WINDOW_S", raising=False)
        else:
            monkeypatch.setenv("TALLY_IDEMPOTENCY_WINDOW_S", text)
        return Settings.resolve(redis_url="redis://h:1/0", home=str(tmp_path)).idempotency_window_ms

    assert resolved(None) == 7 * 86_400_000
    assert resolved("0") == 0  # forever
    assert resolved(" 60 ") == 60_000
    assert resolved(str(366 * 86_400)) == IDEMPOTENCY_WINDOW_MS_MAX


@pytest.mark.parametrize("text", ["59", "1", str(366 * 86_400 + 1), "-5", "1.5", "7d", "", "²"])
def test_a_window_out_of_bounds_or_not_whole_seconds_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="TALLY_IDEMPOTENCY_WINDOW_S"):
        parse_window_s(text)


def test_records_stay_bounded_over_many_short_windows_on_the_servers_real_clock(
    store: RedisStore, layout: KeyLayout
) -> None:
    """A 0.5 s window, 14 rounds of 500 new debits at least 0.3 s apart (every tx shard touched
    each round): a record lives at most 2 windows plus 2 gaps between calls, so no more than 6
    rounds' records are ever held, while 7,000 were written. Slower rounds only lower the bound
    (fewer rounds fit in the lifetime). Without the turnover every record stays and the
    assertion fails at round 7."""
    open_account(store, "acme", limit=10**12)
    window_ms, per_round, gap_s = 500, 500, 0.3
    store.idempotency_window_ms = window_ms
    held = []
    for r in range(14):
        started = time.perf_counter()
        store.apply([(f"r{r}-{i}", "d", "acme", 1, "") for i in range(per_round)])
        held.append(len(_records(store, layout)))
        assert held[-1] <= 6 * per_round, held
        time.sleep(max(0.0, gap_s - (time.perf_counter() - started)))
    assert store.read_accounts(["acme"])["acme"].balance_minor == -14 * per_round  # type: ignore[union-attr]
