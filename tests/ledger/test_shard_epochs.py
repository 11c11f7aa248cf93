"""Epochs per shard in the ledger of record (migration 0007), on SQLite and PostgreSQL: a
one-shard rebuild's epoch, the view every reader takes, and the drain's rule that a shard's
lines must carry that shard's own epoch."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tally.domain.accounts import Account
from tally.domain.results import Result
from tally.errors import LedgerError, UsageError
from tally.ledger.journal import parse_entry_into
from tally.ledger.models import LineBatch, StreamId
from tally.ledger.schema import shard_epochs
from tally.ledger.sql_ledger import SqlLedger


def _line(tid: str, account: str, amount: int, balance: int) -> str:
    return f"{tid}|c|{account}|{amount}|USD|0|{balance}|1700000000000"


def _batch(*entries: tuple[int, str, str]) -> LineBatch:
    """(shard, epoch id carried by the entry, line) each, as the drainer parses them."""
    batch = LineBatch()
    for n, (shard, epoch_id, line) in enumerate(entries, start=1):
        parse_entry_into(batch, shard, StreamId(n, 0), {"e": epoch_id, "d": line})
    return batch


def test_a_shard_rebuilt_alone_gets_its_own_epoch_and_a_whole_rebuild_retires_it(
    ledger: SqlLedger,
) -> None:
    """One current and at most one building epoch per shard; an interrupted one-shard rebuild
    resumes its epoch; finishing it changes that shard only; a whole rebuild brings every shard
    back to the new deployment epoch. A second current row for one shard is refused by the
    database itself (the partial unique index: seen failing, i.e. inserted, without it)."""
    deployment = ledger.init_epoch("tally", 4)
    view = ledger.epoch_view()
    assert view is not None and view.shard_ids == (deployment.epoch_id,) * 4
    assert view.overrides == ()
    _before, building = ledger.begin_shard_rebuild(2)
    assert ledger.begin_shard_rebuild(2)[1] == building  # resumed, not doubled
    assert ledger.epoch_view() == view  # building changes nothing yet
    after = ledger.finish_shard_rebuild(building)
    assert after.shard_ids == (deployment.epoch_id,) * 2 + (building,) + (deployment.epoch_id,)
    assert after.overrides == after.shard_ids and after.for_shard(2).epoch_id == building
    assert ledger.finish_shard_rebuild(building) == after  # a re-run after a crash: no-op
    _, second = ledger.begin_shard_rebuild(2)
    assert ledger.finish_shard_rebuild(second).of(2) == second  # the first one retired
    with pytest.raises(LedgerError):
        ledger.finish_shard_rebuild(building)  # retired: not made current again
    with pytest.raises(UsageError, match="shard must be"):
        ledger.begin_shard_rebuild(4)
    with ledger.transaction(write=True) as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(
            sa.insert(shard_epochs).values(
                shard_epoch_id="dup", epoch_id=deployment.epoch_id, shard=2,
                status="current", started_at_ms=0, finished_at_ms=0,
            )
        )  # fmt: skip
    whole = ledger.begin_rebuild("tally", 4)
    with pytest.raises(UsageError, match="whole-store rebuild"):
        ledger.begin_shard_rebuild(1)
    ledger.finish_rebuild(whole.epoch_id)
    view = ledger.epoch_view()
    assert view is not None and view.shard_ids == (whole.epoch_id,) * 4


def test_the_drain_takes_each_shards_lines_at_that_shards_own_epoch(ledger: SqlLedger) -> None:
    """After shard 1 is rebuilt alone, its lines carry its own epoch and are applied, while a
    line in shard 1 still carrying the deployment epoch (the lost dataset's) is foreign, and
    the other shards' lines at the deployment epoch are applied as before. Seen failing with
    ``_split_foreign`` comparing every shard with the deployment epoch: the shard-1 line was
    foreign and the stale one applied."""
    deployment = ledger.init_epoch("tally", 4)
    assert ledger.create_account(Account("acct", "USD", 0)) is Result.ok
    _, own = ledger.begin_shard_rebuild(1)
    ledger.finish_shard_rebuild(own)
    report = ledger.apply_batch(
        _batch(
            (1, own, _line("t1", "acct", 100, 100)),
            (1, deployment.epoch_id, _line("t2", "acct", 5, 105)),
            (3, deployment.epoch_id, _line("t3", "acct", 7, 107)),
        )
    )
    assert (report.inserted, report.foreign) == (2, 1)
    assert ledger.balance_of("acct") == 107
