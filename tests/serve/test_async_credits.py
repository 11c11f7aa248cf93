"""Credits on both paths: ``Engine.credit`` (sync) and the HTTP path's ``AsyncDebits.credit``,
whose store step joins the debits' coalescer. Ledger first on both; replays, conflicts,
store_lost, READONLY and an unreachable store answer the same on each (a store error after the
guard is a pending credit, durable in the ledger, applied once later).

Seen failing before the change: ``AsyncDebits`` had no ``credit`` (every "async" case), and the
HTTP route called ``Engine.credit`` in a thread, so the coalescer never saw a credit
(``test_concurrent_credits_and_debits_leave_together_in_few_script_calls``: 0 submitted)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tally.billing.engine import CreditOutcome, Engine
from tally.bootstrap import Deployment
from tally.domain.accounts import Account, SystemAccount
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.node import RedisNode
from tally.service.fast_debit import AsyncDebits
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore
from tally.store.transfer_codec import RawTransfer
from tally.sync.rebuild import init_store
from tests.waiting import wait_for

PATHS = ("sync", "async")


class Credits:
    """``credit`` / ``debit`` on one path; the async one keeps one loop (its pool lives there)."""

    def __init__(self, path: str, dep: Deployment) -> None:
        self.path, self.dep = path, dep
        self.runner = asyncio.Runner()
        self.debits = self.runner.run(self._make())

    async def _make(self) -> AsyncDebits:
        return AsyncDebits(self.dep.engine)

    def credit(self, *args: object) -> CreditOutcome:
        if self.path == "sync":
            return self.dep.engine.credit(*args)  # type: ignore[arg-type]
        return self.runner.run(self.debits.credit(*args))  # type: ignore[arg-type]

    def close(self) -> None:
        self.runner.run(self.debits.close())
        self.runner.close()


@pytest.fixture(params=PATHS)
def credits(request: pytest.FixtureRequest, dep: Deployment) -> Iterator[Credits]:
    dep.engine.create_account(Account("alice", "USD"))
    one = Credits(request.param, dep)
    yield one
    one.close()


def test_a_credit_applies_and_its_replay_returns_the_whole_first_outcome(
    credits: Credits,
) -> None:
    first = credits.credit("c1", "alice", 700, "USD", SystemAccount.card_clearing)
    credits.dep.engine.debit("d1", "alice", 100)
    again = credits.credit("c1", "alice", 700, "USD", SystemAccount.card_clearing)
    assert first == CreditOutcome("c1", Result.ok, 700, replayed=False)
    assert again == CreditOutcome("c1", Result.ok, 700, replayed=True)
    assert credits.dep.engine.account("alice").balance_minor == 600  # type: ignore[union-attr]


def test_a_credit_replayed_with_another_amount_is_refused_by_the_ledger(
    credits: Credits,
) -> None:
    credits.credit("c1", "alice", 100, "USD")
    again = credits.credit("c1", "alice", 101, "USD")
    assert again == CreditOutcome("c1", Result.exists_with_different_amount, None, replayed=True)
    assert credits.dep.engine.account("alice").balance_minor == 100  # type: ignore[union-attr]


def test_a_credit_on_an_id_the_store_knows_as_a_debit_is_refused_and_its_intent_settled(
    credits: Credits,
) -> None:
    """The ledger has no intent for the id, the store has its debit: the store refuses, and the
    refusal settles the intent (a conflict is never journaled, so nothing else would)."""
    credits.credit("c0", "alice", 100, "USD")
    credits.dep.engine.debit("x1", "alice", 10)
    outcome = credits.credit("x1", "alice", 10, "USD")
    assert outcome.result is not None and outcome.result.is_replay_conflict and outcome.replayed
    intent = credits.dep.ledger.get_credit_intent("x1")
    assert intent is not None and intent.result is outcome.result
    assert credits.dep.ledger.count_unsettled_credit_intents() == 1  # c0, until drained
    assert credits.dep.engine.account("alice").balance_minor == 90  # type: ignore[union-attr]


def test_a_foreign_epoch_leaves_the_credit_pending_in_the_ledger_not_applied(
    credits: Credits,
) -> None:
    layout = credits.dep.layout
    for shard in range(layout.shards):
        credits.dep.client.set(layout.epoch(shard), "E-another-ledger")
    outcome = credits.credit("c1", "alice", 500, "USD")
    assert outcome == CreditOutcome("c1", None, None)
    assert credits.dep.ledger.get_credit_intent("c1") is not None
    assert credits.dep.ledger.count_unsettled_credit_intents() == 1


def test_a_read_only_node_is_pending_at_once_not_retried(
    credits: Credits, redis_node: RedisNode
) -> None:
    redis_node.client().replicaof(redis_node.host, redis_node.port)  # of itself, as in 2013
    try:
        outcome = credits.credit("c1", "alice", 500, "USD")
    finally:
        redis_node.client().replicaof("no", "one")
    assert outcome.pending
    assert credits.dep.ledger.count_unsettled_credit_intents() == 1
    assert credits.dep.engine.apply_pending_credits(older_than_ms=0) == 1  # applied once, later
    assert credits.dep.engine.account("alice").balance_minor == 500  # type: ignore[union-attr]
    assert credits.credit("c1", "alice", 500, "USD") == CreditOutcome(
        "c1", Result.ok, 500, replayed=True
    )


def test_a_hung_store_is_pending_and_applied_once_when_it_is_back(
    credits: Credits, redis_node: RedisNode
) -> None:
    """Sent, no reply within the socket timeout: unknown, so pending (never a second credit)."""
    credits.credit("warm", "alice", 1, "USD")  # a connection on the async pool, handshake done
    redis_node.pause()
    try:
        outcome = credits.credit("c1", "alice", 700, "USD")
    finally:
        redis_node.resume()
    assert outcome.pending
    assert credits.dep.engine.apply_pending_credits(older_than_ms=0) == 2  # warm, c1: replays
    assert credits.dep.engine.account("alice").balance_minor == 701  # type: ignore[union-attr]


def test_concurrent_credits_and_debits_leave_together_in_few_script_calls(
    dep: Deployment,
) -> None:
    """Each credit's intent is in the ledger before its store step is submitted (checked at the
    coalescer's door), and the store steps of concurrent credits share calls with debits."""
    dep.engine.create_account(Account("alice", "USD"))
    dep.engine.credit("seed", "alice", 1000, "USD")
    ids_seen_at_submit: list[tuple[str, bool]] = []

    async def run() -> tuple[list[CreditOutcome], list[TransferResult], int, int]:
        debits = AsyncDebits(dep.engine)
        assert debits.batcher is not None
        submit = debits.batcher.submit

        async def checked(raw: RawTransfer) -> TransferResult:
            if raw[1] == "c":
                ids_seen_at_submit.append(
                    (raw[0], dep.ledger.get_credit_intent(raw[0]) is not None)
                )
            return await submit(raw)

        debits.batcher.submit = checked  # type: ignore[method-assign]
        try:
            got = await asyncio.gather(
                *(debits.credit(f"c{i}", "alice", 10, "USD") for i in range(20)),
                *(debits.debit(f"d{i}", "alice", 1) for i in range(20)),
            )
            return (
                got[:20],  # type: ignore[return-value]
                got[20:],  # type: ignore[return-value]
                debits.batcher.calls,
                debits.batcher.submitted,
            )
        finally:
            await debits.close()

    credit_outcomes, debit_results, calls, submitted = asyncio.run(run())
    assert [o.result for o in credit_outcomes] == [Result.ok] * 20
    assert [r.result for r in debit_results] == [Result.ok] * 20
    assert sorted(ids_seen_at_submit) == sorted((f"c{i}", True) for i in range(20))
    assert submitted == 40
    assert calls < 40, "the credits' store steps did not coalesce"
    assert dep.engine.account("alice").balance_minor == 1000 + 200 - 20  # type: ignore[union-attr]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sentinel_names_another", [False, True])
def test_noreplicas_from_a_replaced_primary_follows_it_or_leaves_the_credit_pending(
    tmp_path: Path, path: str, sentinel_names_another: bool
) -> None:
    """The credit's store step meets NOREPLICAS from a primary cut off from its replicas. When
    Sentinel names another primary the guard follows it and the credit applies there once;
    when it still names the same one (control) the credit is pending, durable in the ledger."""
    old = RedisNode(name="old", dir=tmp_path / "old")
    new = RedisNode(name="new", dir=tmp_path / "new")
    old.start()
    new.start()
    try:
        layout = KeyLayout("tally", 4)
        with SqlLedger.open(f"sqlite:///{tmp_path / 'l.sqlite3'}") as ledger:
            with old.client() as c:
                init_store(c, layout, ledger)
            with new.client() as c:
                c.replicaof(old.host, old.port)
                wait_for(
                    lambda: c.info("replication").get("master_link_status") == "up",
                    "the replica to sync",
                    timeout_s=20,
                )
            epoch = ledger.current_epoch()
            assert epoch is not None
            store = RedisStore(
                old.client(), layout, epoch.epoch_id, rediscover=new.client,
                primary_moved=lambda: sentinel_names_another,
            )  # fmt: skip
            engine = Engine(store, ledger)
            engine.create_account(Account("alice", "USD"))
            with old.client() as c:
                c.execute_command("WAIT", 1, 5000)
            with new.client() as c:
                c.replicaof("no", "one")  # the others failed over to "new"
            with old.client() as c:
                c.config_set("min-replicas-to-write", "1")  # "old" is cut off: NOREPLICAS
            if path == "sync":
                outcome = engine.credit("c1", "alice", 700, "USD")
            else:

                async def once() -> CreditOutcome:
                    debits = AsyncDebits(engine)
                    try:
                        return await debits.credit("c1", "alice", 700, "USD")
                    finally:
                        await debits.close()

                outcome = asyncio.run(once())
            assert ledger.get_credit_intent("c1") is not None  # ledger first, either way
            if sentinel_names_another:
                assert outcome == CreditOutcome("c1", Result.ok, 700)
                assert store.client.connection_pool.connection_kwargs["port"] == new.port
            else:
                assert outcome.pending
                assert ledger.count_unsettled_credit_intents() == 1
            store.client.close()
    finally:
        new.stop()
        old.stop()
