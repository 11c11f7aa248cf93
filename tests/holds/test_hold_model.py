"""hold.lua agrees with the domain's reference rules (``domain.holds``) on random sequences of
places, captures, voids, expiries (by the server's clock), sweeps and concurrent debits."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally.domain import holds
from tally.domain.accounts import Account, AccountStatus
from tally.domain.rules import AccountBook, Books, apply_transfer, recharge_marker
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore

from .conftest import EPOCH, server_ms, stamp_epoch, wait_past

ACCOUNTS = ["a", "b"]
SHORT_MS, LONG_MS = 1, 600_000
HOLD_IDS = [f"h{i}" for i in range(6)]  # few ids: many replays and conflicts

op = st.one_of(
    st.tuples(
        st.just("place"),
        st.sampled_from(HOLD_IDS),
        st.sampled_from([*ACCOUNTS, "missing"]),
        st.integers(min_value=1, max_value=60),
        st.sampled_from([SHORT_MS, LONG_MS, LONG_MS]),
    ),
    st.tuples(st.just("capture"), st.sampled_from(HOLD_IDS), st.integers(1, 70)),
    st.tuples(st.just("void"), st.sampled_from(HOLD_IDS)),
    st.tuples(
        st.just("debit"),
        st.sampled_from([f"t{i}" for i in range(6)]),
        st.sampled_from(ACCOUNTS),
        st.integers(1, 60),
    ),
    st.tuples(st.just("sweep")),
)


def _journal_events(store: RedisStore, layout: KeyLayout) -> list[tuple[str, str, int]]:
    out = []
    for shard in range(layout.shards):
        for _id, fields in store.client.xrange(layout.journal(shard)):
            for line in fields[b"d"].decode().split("\n"):
                if line.startswith("@h|"):
                    parts = line.split("|")
                    out.append((parts[1], parts[2], int(parts[4])))
    return sorted(out)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    operations=st.lists(op, max_size=30),
    statuses=st.lists(st.sampled_from(list(AccountStatus)), min_size=2, max_size=2),
    thresholds=st.lists(st.sampled_from([None, 30]), min_size=2, max_size=2),
)
def test_random_hold_operations_match_the_reference_model(
    store: RedisStore,
    layout: KeyLayout,
    operations: list,
    statuses: list[AccountStatus],
    thresholds: list[int | None],
) -> None:
    """Every outcome (code, status, amounts, balance and held after, replay flag, recharge opened
    by a capture), every account's balance and held sum, and the journal's hold events are the
    model's. ``expires_at_ms`` comes from the server's clock, so the model takes it from there;
    a short hold is past its expiry (on the server) before the next operation, a long one never
    is during the test."""
    client = store.client
    client.flushall()
    stamp_epoch(client, layout, EPOCH)
    model, hb = Books(), holds.HoldBook()
    for aid, status, threshold in zip(ACCOUNTS, statuses, thresholds, strict=True):
        store.upsert_account(Account(aid, "USD", 20, AccountStatus.active))
        model.accounts[aid] = AccountBook("USD", 20, AccountStatus.active)
        funded = (f"fund-{aid}", "c", aid, 50, "")
        assert store.apply([funded]).results == [apply_transfer(model, *funded)]
        store.upsert_account(Account(aid, "USD", 20, status))
        model.accounts[aid].status = status
        if threshold is not None:
            store.recharge_marker(aid, "rule", str(threshold))
            recharge_marker(model, aid, "rule", str(threshold))
    for operation in operations:
        now = server_ms(client)
        kind = operation[0]
        if kind == "place":
            _, hid, aid, amount, ein = operation
            got = store.place_hold(hid, aid, amount, ein)
            want = holds.place(model, hb, hid, aid, amount, ein, now)
            if (
                got.expires_at_ms is not None
                and not got.replayed
                and got.code is not holds.HoldCode.hold_id_conflict
            ):
                hb.holds[hid].expires_at_ms = got.expires_at_ms  # the server's clock decides
                want = want._replace(expires_at_ms=got.expires_at_ms)
                wait_past(client, got.expires_at_ms if ein == SHORT_MS else 0)
        elif kind == "capture":
            got = store.capture_hold(operation[1], operation[2])
            want = holds.capture(model, hb, operation[1], operation[2], now)
        elif kind == "void":
            got = store.void_hold(operation[1])
            want = holds.void(model, hb, operation[1], now)
        elif kind == "debit":
            raw = (operation[1], "d", operation[2], operation[3], "")
            assert store.apply([raw]).results == [apply_transfer(model, *raw)]
            continue
        else:
            released = store.sweep_holds()
            expected = sum(holds.expire_due(model, hb, h, now) for h in list(hb.holds))
            assert released == expected
            continue
        assert got == want, operation
    states = store.read_accounts(ACCOUNTS)
    for aid in ACCOUNTS:
        state, book = states[aid], model.accounts[aid]
        assert state is not None
        assert (state.balance_minor, state.held_minor) == (book.balance_minor, book.held_minor)
    assert _journal_events(store, layout) == sorted(hb.events)
