"""The engine under the idempotency window (default 7 days): debits pass occurred_at through;
credits occur when their ledger intent was first recorded, so a credit retried after its store
record is gone is refused, never applied twice."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from tally.bootstrap import Deployment
from tally.domain.accounts import Account
from tally.domain.limits import IDEMPOTENCY_WINDOW_MS_DEFAULT
from tally.domain.results import Result
from tally.errors import UsageError
from tally.ledger.schema import credit_intents

from .test_engine import drain_all

DAY_MS = 86_400_000


def _forget_records(dep: Deployment) -> None:
    """What two turnovers of the window do to every transfer-id record: drop them whole."""
    layout = dep.layout
    dep.client.delete(*[layout.tx_generation(s, g) for s in range(layout.shards) for g in (0, 1)])


def _date_intents_back(dep: Deployment, days: int) -> None:
    with dep.ledger.transaction(write=True) as conn:
        conn.execute(
            sa.update(credit_intents).values(
                created_at_ms=credit_intents.c.created_at_ms - days * DAY_MS
            )
        )


def test_the_deployment_runs_with_the_seven_day_window(dep: Deployment) -> None:
    assert dep.store.idempotency_window_ms == IDEMPOTENCY_WINDOW_MS_DEFAULT == 7 * DAY_MS


def test_a_credit_retried_after_its_record_is_gone_is_refused_not_applied_twice(
    dep: Deployment,
) -> None:
    """The credit's occurred_at is its intent's first recording (kept in SQL forever). Eight days
    on, its record dropped, the same credit again is occurred_outside_window and the balance
    stays. Without passing the intent's time (the event would occur "now") it is applied again
    and the balance doubles."""
    eng = dep.engine
    eng.create_account(Account("alice", "USD"))
    assert eng.credit("c1", "alice", 1000, "USD").result is Result.ok
    drain_all(dep)
    _forget_records(dep)
    _date_intents_back(dep, 8)
    again = eng.credit("c1", "alice", 1000, "USD")
    assert (again.result, again.balance_minor) == (Result.occurred_outside_window, 1000)
    assert eng.account("alice").balance_minor == 1000  # type: ignore[union-attr]


def test_a_pending_credit_older_than_the_window_allows_stays_pending_and_unapplied(
    dep: Deployment,
) -> None:
    """A credit intent the store never settled, older than the accepted age, is refused by the
    store on re-apply (its record may be gone): it stays pending for the operator (counted in
    unsettled intents), and the balance does not move. Without the intent's time it applies."""
    eng = dep.engine
    eng.create_account(Account("alice", "USD"))
    assert eng.credit("c1", "alice", 1000, "USD").result is Result.ok
    _forget_records(dep)
    dep.client.delete(*dep.layout.journals())  # as if its journal line never came
    _date_intents_back(dep, 8)
    assert eng.apply_pending_credits(older_than_ms=0) == 1
    assert eng.account("alice").balance_minor == 1000  # type: ignore[union-attr]
    assert dep.ledger.count_unsettled_credit_intents() == 1


def test_debits_carry_occurred_at_single_and_batch(dep: Deployment) -> None:
    eng = dep.engine
    eng.create_account(Account("alice", "USD", 1000))
    now_ms = int(time.time() * 1000)
    assert eng.debit("d1", "alice", 10, "", now_ms - DAY_MS).result is Result.ok
    assert eng.debit("d2", "alice", 10, "", now_ms - 8 * DAY_MS).result is (
        Result.occurred_outside_window
    )
    results = eng.debit_many(
        [("d3", "alice", 10, "", now_ms), ("d4", "alice", 10, "USD", now_ms + DAY_MS)]
    ).results
    assert [r.result for r in results] == [Result.ok, Result.occurred_in_future]
    assert eng.account("alice").balance_minor == -20  # type: ignore[union-attr]


@pytest.mark.parametrize("occurred", [-1, 10**16, "1700000000000", 1.5, True])
def test_a_malformed_occurred_at_is_a_usage_error_and_writes_nothing(
    dep: Deployment, occurred: object
) -> None:
    eng = dep.engine
    eng.create_account(Account("alice", "USD", 1000))
    with pytest.raises(UsageError, match="occurred_at"):
        eng.debit("d1", "alice", 10, "", occurred)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="occurred_at"):
        eng.debit_many([("d1", "alice", 10, "", occurred)])
    assert eng.account("alice").balance_minor == 0  # type: ignore[union-attr]
