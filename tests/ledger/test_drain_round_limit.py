"""The service drainer's round size (``DrainService.limit``): many entries a round while they
are small (coalesced HTTP debits write one or two lines per entry), fewer while they are big
(batch calls' entries), so a round's lines stay bounded. Speed is the benchmark's business
(README, "Benchmarks"); this checks the bound and that every line still settles."""

from __future__ import annotations

import pytest

from tally.bench.sustained import CREDIT_LIMIT_MINOR, bench_deployment
from tally.domain.accounts import Account
from tally.service import workers
from tally.service.workers import DrainService, round_limit


def test_round_limit_follows_the_last_rounds_lines_per_entry() -> None:
    top, lines = workers.DRAIN_LIMIT, workers.DRAIN_LINES_PER_ROUND
    assert round_limit(2000, 2600, 50) == top  # one or two lines an entry: the full limit
    assert round_limit(100, 100 * 625, top) == lines // 625  # 625-line entries: 400 a round
    assert round_limit(3, 3 * 200_000, top) == workers.DRAIN_LIMIT_MIN  # never below the floor
    assert round_limit(0, 0, 123) == 123  # a round that settled nothing keeps the limit


def test_a_round_of_big_entries_lowers_the_next_rounds_limit_and_every_line_settles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the round's line budget at 100 and entries of 50 lines, the round after the first
    asks the drainer for 2 entries. Without ``round_limit`` applied in ``run_once`` (tried)
    every round asked for DRAIN_LIMIT."""
    monkeypatch.setattr(workers, "DRAIN_LINES_PER_ROUND", 100)
    with bench_deployment("tally-round-", None) as (dep, _node):
        dep.ledger.create_account(Account("acme", "USD", CREDIT_LIMIT_MINOR))
        dep.engine.create_account(Account("acme", "USD", CREDIT_LIMIT_MINOR))
        for call in range(6):  # one account, so one shard: one journal entry per call
            dep.engine.debit_many([(f"d{call}-{i}", "acme", 1, "USD") for i in range(50)])
        drain = DrainService(dep)
        asked: list[int] = []
        read = drain.drainer.run_once

        def spy(limit: int = 1000) -> int:
            asked.append(limit)
            return read(limit)

        monkeypatch.setattr(drain.drainer, "run_once", spy)
        monkeypatch.setattr(workers, "DRAIN_LIMIT_MIN", 2)
        assert drain.run_once() == 6  # the first round: DRAIN_LIMIT, every entry
        assert drain.limit == 2  # 100 lines / 50 per entry
        assert dep.ledger.count_transfers() == 300
        dep.engine.debit_many([("e", "acme", 1, "USD")])  # a one-line entry
        assert drain.run_once() == 1
        assert asked == [workers.DRAIN_LIMIT, 2]
        assert drain.limit == 100  # 1 line an entry: the budget allows 100 entries
        assert dep.ledger.balance_of("acme") == -301
