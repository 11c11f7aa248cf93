from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from ledger_helpers import FakeStoreWriter, journal_lines, open_deployment

from tally.errors import StoreLost
from tally.ledger.models import Epoch
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.node import RedisNode
from tally.store.keys import KeyLayout
from tally.sync.drainer import Drainer

ACCOUNTS = [f"cust-{i}" for i in range(6)]


class Crash(Exception):
    pass


def setup(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> tuple[Epoch, FakeStoreWriter]:
    return open_deployment(rclient, layout, ledger, ACCOUNTS)


def write_traffic(writer: FakeStoreWriter, rounds: int = 10) -> int:
    """A mix of credits, debits and refusals; returns the number of journal lines written."""
    lines = 0
    for r in range(rounds):
        batch = [(f"c-{r}-{a}", "c", a, 50 + r, "USD") for a in ACCOUNTS]
        batch += [(f"d-{r}-{a}", "d", a, 70 + 3 * r, "USD") for a in ACCOUNTS]
        batch.append((f"x-{r}", "d", "nobody", 5, "USD"))  # account_not_found, journaled too
        writer.apply(batch)
        lines += len(batch)
    return lines


def assert_exactly_once(rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger) -> None:
    written = journal_lines(rclient, layout)  # whatever is still in the streams
    with ledger.transaction() as conn:
        ids = list(conn.execute(sa.text("SELECT id FROM transfers")).scalars())
    assert len(ids) == len(set(ids))
    assert {w.split("|")[0] for w in written} <= set(ids)
    for account_id in ACCOUNTS:
        bal = int(rclient.hget(layout.account_key(account_id), "bal") or 0)
        assert ledger.balance_of(account_id) == bal
    assert ledger.conservation() == {"USD": 0}
    assert ledger.journal_conflicts_count() == 0


def drain_all(drainer: Drainer) -> int:
    total = 0
    for _ in range(1000):
        done = drainer.run_once(limit=50)
        if done == 0:
            return total
        total += done
    raise AssertionError("drainer did not finish")


def test_drainer_applies_every_line_once_and_trims_what_is_durable(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    _epoch, writer = setup(rclient, layout, ledger)
    lines = write_traffic(writer)
    drainer = Drainer(rclient, layout, ledger, count=2)
    assert drain_all(drainer) > 0
    assert ledger.count_transfers() == lines == drainer.stats.lines_applied
    assert sum(rclient.xlen(k) for k in layout.journals()) == 0  # all acked, all trimmed
    assert_exactly_once(rclient, layout, ledger)


def test_trim_keeps_entries_that_are_delivered_but_not_acknowledged(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    _epoch, writer = setup(rclient, layout, ledger)
    write_traffic(writer, rounds=3)
    shard = layout.shard_of(ACCOUNTS[0])
    key = layout.journal(shard)
    length = rclient.xlen(key)
    rclient.xreadgroup("drainer", "other", {key: ">"}, count=1)  # in flight elsewhere
    drainer = Drainer(rclient, layout, ledger, claim_idle_ms=None)
    drainer.run_once(limit=100)
    assert rclient.xlen(key) == length  # the oldest is pending: nothing above it is trimmed
    assert drainer.trim(shard) == 0


def test_a_round_bigger_than_one_commit_is_settled_in_parts_each_acknowledged_after_it(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    """A round commits at most ``lines_max`` lines per transaction (a backlog of big entries
    would otherwise exceed the ledger's batch bound), and a crash between parts loses nothing."""
    _epoch, writer = setup(rclient, layout, ledger)
    lines = write_traffic(writer)
    commits = 0

    def fault(where: str) -> None:
        nonlocal commits
        if where == "after_commit":
            commits += 1
            if commits == 2:
                raise Crash(where)

    drainer = Drainer(rclient, layout, ledger, count=1000, lines_max=5, fault=fault)
    with pytest.raises(Crash):
        drainer.run_once(limit=1000)
    assert 0 < ledger.count_transfers() < lines
    drain_all(Drainer(rclient, layout, ledger, count=1000, lines_max=5, fault=fault))
    assert commits > 3
    assert ledger.count_transfers() == lines
    assert sum(rclient.xlen(k) for k in layout.journals()) == 0
    assert_exactly_once(rclient, layout, ledger)


@pytest.mark.parametrize("point", ["before_commit", "after_commit", "after_ack"])
def test_parallel_groups_of_shards_crashing_lose_and_duplicate_nothing(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger, point: str
) -> None:
    _epoch, writer = setup(rclient, layout, ledger)
    lines = write_traffic(writer)
    for _ in range(3):  # every group's thread dies at the fault point; the round raises
        drainer = Drainer(rclient, layout, ledger, count=3, workers=3, fault=crash_at(point))
        with pytest.raises(Crash):
            drain_all(drainer)
    drain_all(Drainer(rclient, layout, ledger, count=3, workers=3))
    assert ledger.count_transfers() == lines
    assert sum(rclient.xlen(k) for k in layout.journals()) == 0
    assert_exactly_once(rclient, layout, ledger)


def crash_at(point: str) -> Callable[[str], None]:
    def fault(where: str) -> None:
        if where == point:
            raise Crash(where)

    return fault


@pytest.mark.parametrize("point", ["before_commit", "after_commit", "after_ack"])
def test_a_drainer_crashing_mid_batch_loses_and_duplicates_nothing(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger, point: str
) -> None:
    _epoch, writer = setup(rclient, layout, ledger)
    lines = write_traffic(writer)

    def fault(where: str) -> None:
        if where == point:  # every thread of a dying process stops at its fault point
            raise Crash(where)

    for _ in range(5):  # each "process" dies at the fault point; a new one takes over
        with pytest.raises(Crash):
            drain_all(Drainer(rclient, layout, ledger, count=3, fault=fault))
    drain_all(Drainer(rclient, layout, ledger, count=3))
    assert ledger.count_transfers() == lines
    assert sum(rclient.xlen(k) for k in layout.journals()) == 0
    assert_exactly_once(rclient, layout, ledger)


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_a_sigkilled_drainer_process_loses_and_duplicates_nothing(
    rclient: redis.Redis,
    redis_node: RedisNode,
    layout: KeyLayout,
    ledger: SqlLedger,
    ledger_url: str,
    tmp_path: Path,
    point: str,
) -> None:
    _epoch, writer = setup(rclient, layout, ledger)
    lines = write_traffic(writer)
    marker = tmp_path / "at-fault-point"
    child = Path(__file__).with_name("drain_child.py")
    args = [ledger_url, str(redis_node.port), str(layout.shards), point, str(marker)]
    proc = subprocess.Popen([sys.executable, str(child), *args])
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert marker.exists(), "the child drainer never reached the fault point"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    if point == "after_commit":
        assert ledger.count_transfers() > 0  # committed, never acknowledged
    drain_all(Drainer(rclient, layout, ledger, consumer="drainer-1"))
    assert ledger.count_transfers() == lines
    assert_exactly_once(rclient, layout, ledger)


def test_a_drainer_on_an_empty_redis_reports_store_lost_and_creates_nothing(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    ledger.init_epoch(layout.namespace, layout.shards)
    with pytest.raises(StoreLost):
        Drainer(rclient, layout, ledger).run_once()
    rclient.set(layout.epoch(0), "x")  # even with a (wrong) epoch key there
    with pytest.raises(StoreLost):
        Drainer(rclient, layout, ledger).run_once()
    assert rclient.dbsize() == 1


def test_a_missing_group_means_store_lost(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    epoch = ledger.init_epoch(layout.namespace, layout.shards)
    for shard in range(layout.shards):
        rclient.set(layout.epoch(shard), layout.epoch_value(epoch.epoch_id))
    with pytest.raises(StoreLost):
        Drainer(rclient, layout, ledger).run_once()
    assert not any(rclient.exists(k) for k in layout.journals())


def test_entries_of_another_epoch_are_recorded_not_applied(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    epoch, writer = setup(rclient, layout, ledger)
    writer.credit("ok-1", ACCOUNTS[0], 10)
    key = layout.journal(layout.shard_of(ACCOUNTS[1]))
    rclient.xadd(key, {"e": "ep-foreign", "d": f"f-1|c|{ACCOUNTS[1]}|99|USD|0|99|1"})
    rclient.xadd(key, {"e": epoch.epoch_id, "d": "garbage"})
    drainer = Drainer(rclient, layout, ledger)
    drain_all(drainer)
    assert drainer.stats.foreign == 1 and drainer.stats.conflicts == 1
    assert ledger.balance_of(ACCOUNTS[0]) == 10 and ledger.balance_of(ACCOUNTS[1]) == 0
    assert ledger.journal_conflicts_count() == 2
    assert rclient.xlen(key) == 0


def test_run_stops_on_its_event_and_survives_a_lost_store(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    import threading

    ledger.init_epoch(layout.namespace, layout.shards)
    stop = threading.Event()
    drainer = Drainer(rclient, layout, ledger)
    stats = drainer.run(stop, error_pace_s=0.01, iterations_max=3)
    assert stats.errors == 3 and stats.last_error is not None and "epoch" in stats.last_error
    stop.set()
    assert drainer.run(stop).errors == 3
