"""Invariant 1: a transfer id is used at most once; a replay returns the first outcome."""

from __future__ import annotations

import pytest

from tally.domain.accounts import Account, AccountStatus
from tally.domain.limits import AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX
from tally.domain.results import RECORDED_TRANSFER_RESULTS, Result
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
    first = one(store, "c1", "c", "eve", 10, "USD")
    again = one(store, "c1", "c", "eve", 10, "USD")
    assert (first.result, first.balance_minor, first.replayed) == (
        Result.currency_mismatch,
        0,
        False,
    )
    assert (again.result, again.balance_minor, again.replayed) == (
        Result.currency_mismatch,
        0,
        True,
    )


def test_a_refused_transfer_is_recorded_in_the_currency_it_was_sent_in(store: RedisStore) -> None:
    """The ledger learns the transfer from this record: it must say what the client sent."""
    open_account(store, "eve", "EUR")
    one(store, "d1", "d", "eve", 10, "USD")
    assert store.client.hget(store.layout.tx_for("d1"), "d1") == b"d|eve|10|USD|10|0"


def _refusal_setup(store: RedisStore, code: Result) -> tuple[str, str, int, str]:
    """Make ``code`` the outcome of (kind, account, amount, currency); the accounts funded."""
    open_account(store, "usd")
    open_account(store, "eur", "EUR")
    store.upsert_account(Account("sus", "USD", 0, AccountStatus.suspended))
    one(store, "fund-usd", "c", "usd", 100)
    one(store, "fund-eur", "c", "eur", 100)
    open_account(store, "whale")
    store.apply([(f"fill{i}", "c", "whale", AMOUNT_MINOR_MAX, "") for i in range(100)])
    return {
        Result.ok: ("d", "usd", 30, ""),
        Result.insufficient_funds: ("d", "usd", 500, ""),
        Result.account_not_found: ("d", "ghost", 5, "USD"),
        Result.account_not_active: ("d", "sus", 5, ""),
        Result.currency_mismatch: ("d", "eur", 5, "USD"),
        Result.balance_limit_exceeded: ("c", "whale", 5, ""),
    }[code]


def _change_the_world(store: RedisStore) -> None:
    """After this, re-deciding any of the transfers above would give another answer."""
    one(store, "more-usd", "c", "usd", 10_000)
    one(store, "more-eur", "c", "eur", 10_000)
    open_account(store, "ghost")
    store.upsert_account(Account("sus", "USD", 0, AccountStatus.active))
    one(store, "drain-whale", "d", "whale", AMOUNT_MINOR_MAX)


@pytest.mark.parametrize("code", sorted(RECORDED_TRANSFER_RESULTS))
def test_an_identical_replay_returns_the_whole_first_outcome_for_every_recorded_code(
    store: RedisStore, code: Result
) -> None:
    kind, account, amount, currency = _refusal_setup(store, code)
    first = one(store, "t1", kind, account, amount, currency)
    assert (first.result, first.replayed) == (code, False)
    _change_the_world(store)
    again = one(store, "t1", kind, account, amount, currency)
    assert (again.result, again.balance_minor, again.replayed) == (
        first.result,
        first.balance_minor,
        True,
    )


@pytest.mark.parametrize("code", sorted(RECORDED_TRANSFER_RESULTS))
def test_a_replay_with_another_amount_names_the_amount_for_every_recorded_code(
    store: RedisStore, code: Result
) -> None:
    kind, account, amount, currency = _refusal_setup(store, code)
    one(store, "t1", kind, account, amount, currency)
    other = one(store, "t1", kind, account, amount - 1, currency)
    assert (other.result, other.balance_minor, other.replayed) == (
        Result.exists_with_different_amount,
        None,
        True,
    )


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
