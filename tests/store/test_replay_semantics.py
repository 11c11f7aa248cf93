"""Invariant 1: a transfer id is used at most once; a replay returns the first outcome."""

from __future__ import annotations

import pytest

from tally.domain.accounts import Account, AccountStatus
from tally.domain.limits import BALANCE_MINOR_MAX
from tally.domain.results import Result
from tally.store.redis_store import RedisStore

from .conftest import open_account


def one(store: RedisStore, tid: str, kind: str, account: str, amount: int, cur: str = ""):
    (result,) = store.apply([(tid, kind, account, amount, cur)]).results
    return result


def test_replayed_debit_returns_the_first_outcome_and_moves_money_once(store: RedisStore) -> None:
    open_account(store, "alice")
    one(store, "top", "c", "alice", 1000)
    first = one(store, "d1", "d", "alice", 300)
    again = one(store, "d1", "d", "alice", 300)
    assert (first.result, first.balance_minor, first.replayed) == (Result.ok, 700, False)
    assert (again.result, again.balance_minor, again.replayed) == (Result.ok, 700, True)
    assert store.read_accounts(["alice"])["alice"].balance_minor == 700  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kind", "account", "amount", "currency", "expected"),
    [
        ("d", "alice", 301, "", Result.exists_with_different_amount),
        ("d", "bob", 300, "", Result.exists_with_different_account),
        ("c", "alice", 300, "", Result.exists_with_different_kind),
        ("d", "alice", 300, "EUR", Result.exists_with_different_currency),
    ],
)
def test_replayed_debit_with_other_parameters_is_rejected_with_a_distinct_code(
    store: RedisStore, kind: str, account: str, amount: int, currency: str, expected: Result
) -> None:
    open_account(store, "alice")
    open_account(store, "bob")
    one(store, "top", "c", "alice", 1000)
    one(store, "d1", "d", "alice", 300)
    conflict = one(store, "d1", kind, account, amount, currency)
    assert (conflict.result, conflict.replayed, conflict.balance_minor) == (expected, True, None)
    assert store.read_accounts(["alice"])["alice"].balance_minor == 700  # type: ignore[union-attr]


def test_a_refused_debit_is_refused_again_on_replay_even_after_a_top_up(store: RedisStore) -> None:
    open_account(store, "alice")
    assert one(store, "d1", "d", "alice", 50).result is Result.insufficient_funds
    one(store, "top", "c", "alice", 1000)
    replay = one(store, "d1", "d", "alice", 50)
    assert (replay.result, replay.replayed, replay.balance_minor) == (
        Result.insufficient_funds,
        True,
        0,
    )


def test_a_debit_on_a_missing_account_stays_refused_after_the_account_appears(
    store: RedisStore,
) -> None:
    assert one(store, "d1", "d", "ghost", 5).result is Result.account_not_found
    open_account(store, "ghost")
    assert one(store, "d1", "d", "ghost", 5).result is Result.account_not_found


def test_credit_limit_lets_the_balance_go_negative_down_to_the_limit(store: RedisStore) -> None:
    open_account(store, "postpaid", limit=100)
    assert one(store, "d1", "d", "postpaid", 100).balance_minor == -100
    assert one(store, "d2", "d", "postpaid", 1).result is Result.insufficient_funds


def test_suspended_accounts_refuse_debits_but_accept_credits(store: RedisStore) -> None:
    store.upsert_account(Account("sam", "USD", 0, AccountStatus.suspended))
    assert one(store, "d1", "d", "sam", 1).result is Result.account_not_active
    assert one(store, "c1", "c", "sam", 10).result is Result.ok


def test_closed_accounts_refuse_credits(store: RedisStore) -> None:
    store.upsert_account(Account("old", "USD", 0, AccountStatus.closed))
    assert one(store, "c1", "c", "old", 10).result is Result.account_not_active


def test_currency_mismatch_is_refused_and_recorded(store: RedisStore) -> None:
    open_account(store, "eve", "EUR")
    assert one(store, "c1", "c", "eve", 10, "USD").result is Result.currency_mismatch
    assert one(store, "c1", "c", "eve", 10, "USD").replayed


def test_a_credit_past_the_balance_bound_is_refused(store: RedisStore) -> None:
    open_account(store, "whale")
    for i in range(100):
        one(store, f"c{i}", "c", "whale", 10**13)
    assert one(store, "over", "c", "whale", 1).result is Result.balance_limit_exceeded
    assert store.read_accounts(["whale"])["whale"].balance_minor == BALANCE_MINOR_MAX  # type: ignore[union-attr]


def test_the_same_id_twice_in_one_batch_is_applied_once(store: RedisStore) -> None:
    open_account(store, "alice")
    one(store, "top", "c", "alice", 100)
    results = store.apply([("d1", "d", "alice", 10, ""), ("d1", "d", "alice", 10, "")]).results
    assert [(r.result, r.replayed) for r in results] == [(Result.ok, False), (Result.ok, True)]
    assert store.read_accounts(["alice"])["alice"].balance_minor == 90  # type: ignore[union-attr]


def test_account_upsert_never_changes_the_currency(store: RedisStore) -> None:
    open_account(store, "alice", "USD")
    assert store.upsert_account(Account("alice", "EUR")) is Result.currency_mismatch


@pytest.mark.parametrize("amount_text", ["1.0", "007", "1e3", "-5", "0"])
def test_the_script_itself_refuses_non_canonical_amounts_unrecorded(
    store: RedisStore, amount_text: str
) -> None:
    """Defence in depth below the Python validation: what the script stores must be exact."""
    open_account(store, "alice")
    one(store, "top", "c", "alice", 100)
    r = one(store, "odd", "d", "alice", amount_text)  # type: ignore[arg-type]
    assert (r.result, r.replayed) == (Result.amount_invalid, False)
    assert store.client.hget(store.layout.tx_for("odd"), "odd") is None
    assert store.read_accounts(["alice"])["alice"].balance_minor == 100  # type: ignore[union-attr]
