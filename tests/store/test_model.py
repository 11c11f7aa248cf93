"""The real Lua script agrees with the domain's reference rules on random operation sequences."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally.domain.accounts import Account, AccountStatus
from tally.domain.rules import AccountBook, Books, apply_transfer
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore

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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=ops, cuts=batching, statuses=st.lists(st.sampled_from(list(AccountStatus)), min_size=3, max_size=3))
def test_random_operations_match_the_reference_model(
    store: RedisStore, layout: KeyLayout, operations: list, cuts: list[int], statuses: list[AccountStatus]
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
