"""A drain round on one primary reads every shard in a fixed number of round trips, and a shard
that lost its epoch or its journal group costs that shard only.

Found in the lab (2026-12-04): the drainer read shard by shard, five round trips each, so 16
shards were 80 sequential round trips a round: 1.6-2.4 s across the lab's 10 ms data-center
links, which every admin drain and every serve's stop waited for. Without the pipelined round
the count below is 5 per shard."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from ledger_helpers import FakeStoreWriter, open_deployment

from tally.errors import StoreLost
from tally.ledger.sql_ledger import SqlLedger
from tally.store.keys import KeyLayout
from tally.sync.drainer import GROUP, Drainer

SHARDS = 16
ACCOUNTS = [f"acct-{i}" for i in range(40)]


@pytest.fixture
def layout() -> KeyLayout:
    return KeyLayout("tally", SHARDS)


def _setup(rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger) -> FakeStoreWriter:
    _epoch, writer = open_deployment(rclient, layout, ledger, ACCOUNTS)
    writer.apply([(f"c-{a}", "c", a, 50, "USD") for a in ACCOUNTS])
    return writer


def _sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts what reaches Redis: one send per command, one per pipeline."""
    sent = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return sent


def _shards_with_entries(rclient: redis.Redis, layout: KeyLayout) -> list[int]:
    return [s for s in range(layout.shards) if rclient.xlen(layout.journal(s))]


def test_a_round_over_sixteen_shards_reads_in_three_round_trips_and_settles_them_all(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(rclient, layout, ledger)
    holding = len(_shards_with_entries(rclient, layout))
    assert holding >= 8  # the transfers spread over the shards
    # one group of shards: with more, each group's thread may open a pool connection of its
    # own, whose handshake (CLIENT SETINFO) counts as sends too
    drainer = Drainer(rclient, layout, ledger, count=100, workers=1)
    sent = _sends(monkeypatch)
    assert drainer.run_once(limit=1000) == holding  # one journal entry per shard written
    # 3 reads, then one XACK per shard settled and the trim (one MULTI, one pipeline)
    assert sent[0] == 3 + holding + 2
    sent[0] = 0
    assert drainer.run_once(limit=1000) == 0  # nothing left over, nothing read twice
    assert sent[0] == 3  # an idle round: 3, not 5 per shard (80)
    monkeypatch.undo()
    assert all(ledger.balance_of(a) == 50 for a in ACCOUNTS)
    assert _shards_with_entries(rclient, layout) == []


@pytest.mark.parametrize("loss", ["epoch key gone", "journal group gone"])
def test_a_shard_that_lost_its_epoch_or_group_is_skipped_and_the_others_settle(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger, loss: str
) -> None:
    _setup(rclient, layout, ledger)
    lost = _shards_with_entries(rclient, layout)[0]
    if loss == "epoch key gone":
        rclient.delete(layout.epoch(lost))
    else:
        rclient.xgroup_destroy(layout.journal(lost), GROUP)
    on_lost = [a for a in ACCOUNTS if layout.shard_of(a) == lost]
    drainer = Drainer(rclient, layout, ledger, count=100)
    holding = len(_shards_with_entries(rclient, layout))
    assert drainer.run_once(limit=1000) == holding - 1  # entries, one per shard written
    assert _shards_with_entries(rclient, layout) == [lost]
    assert drainer.stats.last_error is not None and f"shard {lost}" in drainer.stats.last_error
    assert all(ledger.balance_of(a) == 0 for a in on_lost)
    assert all(ledger.balance_of(a) == 50 for a in ACCOUNTS if a not in on_lost)
    assert rclient.xlen(layout.journal(lost)) == 1  # kept for the rebuild to judge
    with pytest.raises(StoreLost, match=f"shard {lost}"):
        drainer.run_once(limit=1000)  # nothing else to settle: the loss is the round's answer


def test_under_a_backlog_a_round_reads_its_limit_not_every_shards_full_count(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    """Read all at once, each shard's full ``count`` would move up to 16 x ``count`` entries
    into the pending list to settle ``limit`` of them, the rest read again every round."""
    writer = _setup(rclient, layout, ledger)
    for n in range(6):  # a backlog: several entries in every shard
        writer.apply([(f"d{n}-{a}", "d", a, 1, "USD") for a in ACCOUNTS])
    drainer = Drainer(rclient, layout, ledger, count=100)
    assert drainer.run_once(limit=2 * SHARDS) == 2 * SHARDS
    pending = sum(int(rclient.xpending(layout.journal(s), GROUP)["pending"]) for s in range(SHARDS))
    assert pending == 0  # everything read was settled and acknowledged
