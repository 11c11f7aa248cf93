"""Hold edges on the real store: expiry by the server's clock (never captured afterwards,
released on the next touch or by the bounded sweeper), the epoch guard and journal-full
behaviour of every hold script, and bad input refused before anything is written."""

from __future__ import annotations

from typing import Any

import pytest

from tally.billing.engine import Engine
from tally.domain.accounts import Account
from tally.domain.holds import HOLD_EXPIRES_MS_MAX, HoldCode, HoldStatus, InvalidExpiry
from tally.errors import InvalidAmount, InvalidId, StoreBackpressure, StoreLost, UsageError
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore

from .conftest import server_ms, wait_past

LONG_MS = 600_000


def _funded(store: RedisStore, amount: int = 100) -> None:
    store.upsert_account(Account("a", "USD"))
    store.apply([("fund", "c", "a", amount, "")])


def _journal_len(store: RedisStore, layout: KeyLayout) -> int:
    return sum(int(store.client.xlen(layout.journal(s))) for s in range(layout.shards))


def test_an_expired_hold_can_never_be_captured_and_is_released_on_touch(
    store: RedisStore, layout: KeyLayout
) -> None:
    _funded(store)
    placed = store.place_hold("h", "a", 60, 1)
    assert placed.code is HoldCode.ok and placed.expires_at_ms is not None
    wait_past(store.client, placed.expires_at_ms)
    assert store.get_hold("h").status is HoldStatus.expired, "due reads expired before release"
    state = store.read_accounts(["a"])["a"]
    assert state is not None and state.held_minor == 60, "not released until touched or swept"
    refused = store.capture_hold("h", 10)
    assert (refused.code, refused.status) == (HoldCode.hold_expired, HoldStatus.expired)
    state = store.read_accounts(["a"])["a"]
    assert state is not None and (state.balance_minor, state.held_minor) == (100, 0)
    assert store.capture_hold("h", 10).code is HoldCode.hold_expired
    assert store.void_hold("h").code is HoldCode.hold_expired
    assert store.sweep_holds() == 0, "already released: the sweeper finds nothing"


def test_the_sweeper_releases_expired_holds_nobody_touched_a_bounded_number_per_call(
    store: RedisStore, layout: KeyLayout
) -> None:
    _funded(store)
    last = 0
    for i in range(5):
        placed = store.place_hold(f"s{i}", "a", 10, 1)
        last = max(last, placed.expires_at_ms or 0)
    assert store.place_hold("long", "a", 10, LONG_MS).code is HoldCode.ok
    wait_past(store.client, last)
    assert store.sweep_holds(limit=2) == 2
    assert store.sweep_holds(limit=2) == 2
    assert store.sweep_holds(limit=2) == 1
    assert store.sweep_holds(limit=2) == 0
    state = store.read_accounts(["a"])["a"]
    assert state is not None and state.held_minor == 10, "the long hold stays"
    with pytest.raises(UsageError):
        store.sweep_holds(limit=10**6)


def test_a_hold_expiring_later_is_not_swept(store: RedisStore) -> None:
    """The sweeper decides by the server's clock, not by being called."""
    _funded(store)
    store.place_hold("later", "a", 10, LONG_MS)
    assert store.sweep_holds() == 0
    assert store.get_hold("later").status is HoldStatus.open


def test_every_hold_script_refuses_a_store_without_the_epoch(
    store: RedisStore, layout: KeyLayout
) -> None:
    _funded(store)
    store.place_hold("h", "a", 10, 1)
    wait_past(store.client, server_ms(store.client) + 2)
    store.client.delete(*(layout.epoch(s) for s in range(layout.shards)))
    for call in (
        lambda: store.place_hold("h2", "a", 10, LONG_MS),
        lambda: store.capture_hold("h", 10),
        lambda: store.void_hold("h"),
        lambda: store.get_hold("h"),
        lambda: store.sweep_holds(),
    ):
        with pytest.raises(StoreLost):
            call()
    assert store.client.hget(layout.account_key("a"), "hd") == b"10", "nothing written"


def test_a_full_journal_refuses_hold_writes(
    store: RedisStore, layout: KeyLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As transfer.lua: at the journal bound a hold write is refused (backpressure), nothing
    written; reading a hold still works."""
    _funded(store)
    assert store.place_hold("h", "a", 10, LONG_MS).code is HoldCode.ok
    shard = layout.shard_of("a")
    journal = layout.journal(shard)
    from tally.domain import limits

    pipe = store.client.pipeline(transaction=False)
    for _ in range(limits.JOURNAL_ENTRIES_MAX - int(store.client.xlen(journal))):
        pipe.xadd(journal, {"e": "x", "d": ""})
    pipe.execute()
    before = _journal_len(store, layout)
    for call in (
        lambda: store.place_hold("h2", "a", 10, LONG_MS),
        lambda: store.capture_hold("h", 5),
        lambda: store.void_hold("h"),
    ):
        with pytest.raises(StoreBackpressure):
            call()
    assert _journal_len(store, layout) == before
    assert store.get_hold("h").status is HoldStatus.open


def test_bad_input_is_refused_by_the_engine_before_the_store(store: RedisStore) -> None:
    """The library checks ids, amounts and the expiry bound first: nothing reaches the store
    (a hold id that was refused here is still free afterwards)."""
    _funded(store)
    engine = Engine(store, ledger=None)  # type: ignore[arg-type]  # never reached
    for call, error in (
        (lambda: engine.place_hold("h", "a", 0, 1000), InvalidAmount),
        (lambda: engine.place_hold("h", "a", -1, 1000), InvalidAmount),
        (lambda: engine.place_hold("h", "a", 10**13 + 1, 1000), InvalidAmount),
        (lambda: engine.place_hold("h", "a", 5, 0), InvalidExpiry),
        (lambda: engine.place_hold("h", "a", 5, HOLD_EXPIRES_MS_MAX + 1), InvalidExpiry),
        (lambda: engine.place_hold("h|x", "a", 5, 1000), InvalidId),
        (lambda: engine.capture_hold("h", 0), InvalidAmount),
    ):
        with pytest.raises(error):
            call()
    assert store.get_hold("h").code is HoldCode.hold_not_found
    assert engine.place_hold("h", "a", 5, 1000).code is HoldCode.ok


def test_every_hold_script_call_touches_the_keys_of_one_logical_shard(
    store: RedisStore, layout: KeyLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later Redis Cluster store can run each call on one node: the route call uses the hold
    id's shard, every other call the account's (where the hold record lives)."""
    _funded(store)
    calls: list[tuple[str, list[str]]] = []
    real = store._run

    def spy(batch: Any, **kw: Any) -> Any:
        batch = list(batch)
        calls.extend((name, keys) for name, keys, _ in batch)
        return real(batch, **kw)

    monkeypatch.setattr(store, "_run", spy)
    placed = store.place_hold("h-shard", "a", 10, 1)
    assert placed.expires_at_ms is not None
    wait_past(store.client, placed.expires_at_ms)
    store.get_hold("h-shard")
    store.capture_hold("h-shard", 5)
    store.sweep_holds()
    account_tag = layout.tag(layout.shard_of("a"))
    assert {name for name, _ in calls} == {"hold_route", "hold", "hold_sweep"}
    for name, keys in calls:
        tags = {key.split("}")[0] + "}" for key in keys}
        assert len(tags) == 1, (name, keys)
        if name == "hold":
            assert tags == {account_tag}
        if name == "hold_route":
            assert tags == {layout.tag(layout.shard_of("h-shard"))}
