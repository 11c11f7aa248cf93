"""The direct path of ``sql_apply``, on SQLite and PostgreSQL: a batch of new ids is inserted
straight into ``transfers`` (COPY; SQLite one prepared INSERT) inside a savepoint; any id already
stored sends the whole batch through the staging table instead. Exactly once either way, and the
same ledger as the staging path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from test_journal_apply import EPOCH_NS, at, line

from tally.domain.accounts import SystemAccount
from tally.domain.transfers import Transfer, TransferKind
from tally.errors import LedgerError
from tally.ledger import sql_apply
from tally.ledger.models import DrainedLine, IntentState
from tally.ledger.schema import journal_conflicts, transfers
from tally.ledger.sql_ledger import SqlLedger


@pytest.fixture
def pg(ledger_url: str) -> Iterator[SqlLedger]:
    """Either ledger (the name stays from when the direct path was PostgreSQL's only)."""
    with SqlLedger.open(ledger_url) as ledger:
        yield ledger


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts batches that went through the staging table (lines per call)."""
    calls: list[int] = []
    load = sql_apply._load_stage

    def counting(conn: sa.Connection, rows: sql_apply.Sequence[sql_apply.StagedRow]) -> None:
        calls.append(len(rows))
        load(conn, rows)

    monkeypatch.setattr(sql_apply, "_load_stage", counting)
    return calls


def _stored(ledger: SqlLedger) -> list[tuple[str, str, str, int]]:
    t = transfers.c
    query = sa.select(t.id, t.debit_account_id, t.credit_account_id, t.amount_minor)
    with ledger.transaction() as conn:
        return sorted((r[0], r[1], r[2], int(r[3])) for r in conn.execute(query))


def test_new_ids_go_straight_in_and_a_redelivery_takes_the_staging_path(
    pg: SqlLedger, staged: list[int]
) -> None:
    """Counterparties as the staging path joins them. With the primary key's refusal re-raised
    instead of falling back (tried), the redelivered batch failed with ``UniqueViolation``
    (SQLite: ``UNIQUE constraint failed: transfers.id``)."""
    epoch = pg.init_epoch(EPOCH_NS, 1)
    pg.record_credit_intent(
        Transfer("c1", TransferKind.credit, "acme", 500, "USD"), SystemAccount.adjustments
    )
    batch = [
        at(epoch.epoch_id, 1, line("d1", "d", "acme", 7)),
        at(epoch.epoch_id, 1, line("c1", "c", "acme", 500), no=1),
        at(epoch.epoch_id, 1, line("c2", "c", "beta", 9), no=2),
    ]
    first = pg.apply_journal(batch)
    assert (first.inserted, first.duplicates, first.conflicts, first.intents_settled) == (
        3,
        0,
        0,
        1,
    )
    assert staged == []  # every id new: one COPY, no staging table
    assert _stored(pg) == [
        ("c1", "@adjustments:USD", "acme", 500),  # the pending intent's source
        ("c2", "@card_clearing:USD", "beta", 9),  # no intent: card clearing
        ("d1", "acme", "@usage_revenue:USD", 7),
    ]
    intent = pg.get_credit_intent("c1")
    assert intent is not None and intent.state is IntentState.settled
    again = pg.apply_journal(batch)  # a crash between commit and XACK re-delivers the batch
    assert (again.inserted, again.duplicates, again.conflicts, again.intents_settled) == (
        0,
        3,
        0,
        0,
    )
    assert staged == [3]
    assert pg.count_transfers() == 3 and pg.balance_of("acme") == 493


def test_a_stored_id_at_the_end_of_a_batch_rolls_back_the_copy_and_is_a_recorded_conflict(
    pg: SqlLedger, staged: list[int]
) -> None:
    """The insert has stored every other line when the primary key refuses the last one.
    Without the savepoint (tried: ``begin_nested`` removed) the PostgreSQL transaction was
    aborted and the staging path's first statement failed with ``InFailedSqlTransaction``: the
    batch never applied; on SQLite the 50 rows stayed and the staging path counted them as
    duplicates (50 inserted was 0)."""
    epoch = pg.init_epoch(EPOCH_NS, 1)
    pg.apply_journal([at(epoch.epoch_id, 1, line("t", "c", "acme", 100))])
    batch: list[DrainedLine] = [
        at(epoch.epoch_id, 2, line(f"n{i}", "d", "acme", 1), no=i) for i in range(50)
    ]
    batch.append(at(epoch.epoch_id, 2, line("t", "c", "acme", 999), no=50))
    report = pg.apply_journal(batch)
    assert (report.inserted, report.duplicates, report.conflicts) == (50, 0, 1)
    assert staged == [51]
    assert pg.count_transfers() == 51 and pg.balance_of("acme") == 50
    with pg.transaction() as conn:
        reasons = conn.execute(sa.select(journal_conflicts.c.reason)).scalars().all()
    assert reasons == ["different_amount"]


def test_too_many_pending_intents_or_an_id_twice_take_the_staging_path(
    pg: SqlLedger, staged: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound on the pending-intent listing, and a batch repeating an id (the COPY would
    refuse it too and fall back; the check saves that wasted COPY). Both still settle exactly
    once, from the right counterparty."""
    epoch = pg.init_epoch(EPOCH_NS, 1)
    pg.record_credit_intent(
        Transfer("c1", TransferKind.credit, "acme", 5, "USD"), SystemAccount.adjustments
    )
    pg.record_credit_intent(Transfer("c9", TransferKind.credit, "acme", 5, "USD"))
    monkeypatch.setattr(sql_apply, "DIRECT_PENDING_INTENTS_MAX", 1)
    report = pg.apply_journal([at(epoch.epoch_id, 1, line("c1", "c", "acme", 5))])
    assert (report.inserted, report.intents_settled) == (1, 1)
    assert staged == [1]
    twice = [
        at(epoch.epoch_id, 2, line("d1", "d", "acme", 1)),
        at(epoch.epoch_id, 2, line("d1", "d", "acme", 1), no=1),
    ]
    report = pg.apply_journal(twice)
    assert (report.inserted, report.duplicates) == (1, 1)
    assert staged == [1, 2]
    assert _stored(pg) == [
        ("c1", "@adjustments:USD", "acme", 5),
        ("d1", "acme", "@usage_revenue:USD", 1),
    ]


def test_a_copy_refused_for_another_reason_is_a_ledger_error_and_applies_nothing(
    pg: SqlLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the primary key's refusal falls back; any other database error is the ledger's
    (``LedgerError``, an infrastructure error the drainer counts and retries). Without the
    translation in ``_copy`` (tried) psycopg's ``CheckViolation`` escaped as is, which the
    drainer's loop treats as a bug and dies on."""
    epoch = pg.init_epoch(EPOCH_NS, 1)
    rows = sql_apply._transfer_rows

    def zero_amounts(*args: object) -> object:
        for row in rows(*args):  # type: ignore[arg-type]
            yield (*row[:5], 0, *row[6:])  # ck_transfers_amount refuses it

    monkeypatch.setattr(sql_apply, "_transfer_rows", zero_amounts)
    with pytest.raises(LedgerError, match=r"(?i)check constraint"):
        pg.apply_journal([at(epoch.epoch_id, 1, line("d1", "d", "acme", 7))])
    assert pg.count_transfers() == 0
