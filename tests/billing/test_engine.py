"""The engine end to end on real Redis and real SQL (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from tally.bootstrap import Deployment
from tally.domain.accounts import Account, AccountStatus, SystemAccount
from tally.domain.results import Result
from tally.errors import InvalidAmount, InvalidId, StoreLost
from tally.ops.node import RedisNode
from tally.sync.drainer import Drainer
from tally.sync.rebuild import rebuild
from tally.sync.reconcile import reconcile

ROUNDS_MAX = 100


def drain_all(dep: Deployment) -> None:
    drainer = Drainer(dep.client, dep.layout, dep.ledger)
    for _ in range(ROUNDS_MAX):
        if drainer.run_once() == 0:
            return
    raise AssertionError("journal did not drain")


def test_every_transfer_reaches_the_ledger_and_reconcile_agrees(dep: Deployment) -> None:
    eng = dep.engine
    assert eng.create_account(Account("alice", "USD")) is Result.ok
    assert eng.create_account(Account("alice", "USD")) is Result.exists
    assert eng.credit("c1", "alice", 1000, "USD").result is Result.ok
    results = eng.debit_many([(f"d{i}", "alice", 10) for i in range(50)]).results
    assert all(r.result is Result.ok for r in results)
    assert eng.debit("over", "alice", 10_000).result is Result.insufficient_funds
    drain_all(dep)
    assert dep.ledger.balance_of("alice") == 500
    assert sum(dep.ledger.conservation().values()) == 0
    report = reconcile(dep.client, dep.layout, dep.ledger)
    assert (report.accounts_checked, report.accounts_drifted) == (1, 0)


def test_a_credit_while_the_store_is_down_waits_in_the_ledger_and_is_applied_once(
    dep: Deployment, redis_node: RedisNode
) -> None:
    eng = dep.engine
    eng.create_account(Account("alice", "USD"))
    redis_node.pause()  # a hung primary: the store call times out (2 s), outcome unknown
    try:
        pending = eng.credit("c1", "alice", 700, "USD", SystemAccount.card_clearing)
    finally:
        redis_node.resume()
    assert pending.pending
    assert dep.ledger.count_unsettled_credit_intents() == 1
    assert eng.apply_pending_credits(older_than_ms=0) == 1
    assert eng.apply_pending_credits(older_than_ms=0) == 1  # still unsettled until drained: replays
    drain_all(dep)
    assert dep.ledger.count_unsettled_credit_intents() == 0
    assert eng.account("alice").balance_minor == 700  # type: ignore[union-attr]
    assert dep.ledger.balance_of("alice") == 700


def test_a_credit_replayed_with_other_parameters_is_refused_by_the_ledger(dep: Deployment) -> None:
    dep.engine.create_account(Account("alice", "USD"))
    dep.engine.credit("c1", "alice", 100, "USD")
    again = dep.engine.credit("c1", "alice", 101, "USD")
    assert again.result is Result.exists_with_different_amount
    assert dep.engine.account("alice").balance_minor == 100  # type: ignore[union-attr]


def test_suspension_is_written_to_the_ledger_and_mirrored_to_the_store(dep: Deployment) -> None:
    dep.engine.create_account(Account("alice", "USD"))
    dep.engine.credit("c1", "alice", 100, "USD")
    assert dep.engine.set_status("alice", AccountStatus.suspended) is Result.ok
    assert dep.engine.debit("d1", "alice", 1).result is Result.account_not_active
    assert dep.ledger.get_account("alice").status is AccountStatus.suspended  # type: ignore[union-attr]


def test_bad_input_is_refused_before_anything_is_written(dep: Deployment) -> None:
    dep.engine.create_account(Account("alice", "USD"))
    with pytest.raises(InvalidAmount):
        dep.engine.debit("d1", "alice", -5)
    with pytest.raises(InvalidAmount):
        dep.engine.debit("d1", "alice", 1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidId):
        dep.engine.debit("d|1", "alice", 1)
    with pytest.raises(InvalidId):
        dep.engine.debit("d1", "аlice", 1)  # Cyrillic a: a look-alike, refused
    assert dep.client.xlen(dep.layout.journal(dep.layout.shard_of("alice"))) == 0


def test_after_the_aof_defect_every_write_is_refused_and_rebuild_restores_exact_balances(
    dep: Deployment, redis_node: RedisNode
) -> None:
    eng = dep.engine
    for name in ("alice", "bob", "carol"):
        eng.create_account(Account(name, "USD", 50 if name == "carol" else 0))
        eng.credit(f"fund-{name}", name, 1000, "USD")
    eng.debit_many([(f"d{i}", ("alice", "bob", "carol")[i % 3], 7) for i in range(90)])
    eng.debit("deep", "carol", 1000)
    drain_all(dep)
    before = {a: s.balance_minor for a, s in eng.accounts(["alice", "bob", "carol"]).items() if s}
    dep.client.save()
    dep.client.close()
    redis_node.restart(directives={"appendonly": "yes"})  # the 2013 operator mistake
    assert dep.client.dbsize() == 0
    with pytest.raises(StoreLost):
        eng.debit("after", "alice", 1)
    with pytest.raises(StoreLost):
        eng.account("alice")
    assert dep.client.dbsize() == 0, "the empty dataset accepted no write"
    rebuild(dep.client, dep.layout, dep.ledger)
    after = {a: s.balance_minor for a, s in eng.accounts(["alice", "bob", "carol"]).items() if s}
    assert after == before
    replay = eng.debit("d0", "alice", 7)
    assert replay.replayed and replay.result is Result.ok
    assert reconcile(dep.client, dep.layout, dep.ledger).accounts_drifted == 0


@pytest.mark.parametrize("path", ["sync", "async"])
def test_after_a_rebuild_elsewhere_the_next_debit_catches_up_with_the_new_epoch(
    dep: Deployment, path: str
) -> None:
    """Another process rebuilt the store (a new epoch in the ledger): this engine's first write
    sees store_lost, reads the ledger's epoch, and sends once more; on either path."""
    from .test_failover import debit_on

    eng = dep.engine
    eng.create_account(Account("alice", "USD"))
    eng.credit("fund", "alice", 1000, "USD")
    drain_all(dep)
    old_epoch = dep.store.epoch_id
    rebuild(dep.client, dep.layout, dep.ledger, force=True)
    assert dep.store.epoch_id == old_epoch, "this engine has not heard of the rebuild"
    result = debit_on(path, eng, "d1", "alice", 10)
    assert (result.result, result.balance_minor) == (Result.ok, 990)
    assert dep.store.epoch_id != old_epoch
