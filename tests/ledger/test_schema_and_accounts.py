from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tally.domain.accounts import Account, AccountStatus
from tally.domain.results import Result
from tally.errors import LedgerError, LedgerNotInitialised, UsageError
from tally.ledger.migrate import head_revision
from tally.ledger.models import EpochStatus
from tally.ledger.schema import metadata
from tally.ledger.sql_epochs import AlreadyInitialised
from tally.ledger.sql_ledger import SqlLedger


def test_migration_creates_the_schema_the_code_describes(ledger: SqlLedger) -> None:
    with ledger.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        tables = set(sa.inspect(conn).get_table_names())
    assert {"epochs", "accounts", "transfers", "credit_intents", "journal_conflicts"} <= tables


def test_migrations_rerun_on_an_existing_ledger_change_nothing(ledger_url: str) -> None:
    with SqlLedger.open(ledger_url) as first:
        first.init_epoch("tally", 4)
        assert first.create_account(Account("a1", "USD")) is Result.ok
    with SqlLedger.open(ledger_url) as again:
        assert again.get_account("a1") == Account("a1", "USD")
        with again.engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        assert version == head_revision()
    with SqlLedger.open(ledger_url, migrate=False) as plain:
        assert plain.current_epoch() is not None


def test_opening_without_migrating_an_empty_database_says_not_initialised(
    tmp_path: Path,
) -> None:
    path = tmp_path / "none.sqlite3"
    with pytest.raises(LedgerNotInitialised):
        SqlLedger.open(f"sqlite:///{path}", migrate=False)
    assert not path.exists()


def test_an_in_memory_sqlite_ledger_works() -> None:
    with SqlLedger.open("sqlite://") as mem:
        assert mem.create_account(Account("a", "EUR")) is Result.ok


def test_init_epoch_refuses_a_second_current_epoch(ledger: SqlLedger) -> None:
    epoch = ledger.init_epoch("tally", 8)
    assert epoch.status is EpochStatus.current and ledger.current_epoch() == epoch
    with pytest.raises(AlreadyInitialised):
        ledger.init_epoch("tally", 8)


def test_rebuild_epoch_becomes_current_and_retires_the_old_one(ledger: SqlLedger) -> None:
    old = ledger.init_epoch("tally", 4)
    building = ledger.begin_rebuild("tally", 4)
    assert building.status is EpochStatus.building
    assert ledger.begin_rebuild("tally", 4) == building  # an interrupted rebuild resumes
    assert ledger.current_epoch() == old
    new = ledger.finish_rebuild(building.epoch_id)
    assert ledger.current_epoch() == new and new.epoch_id == building.epoch_id
    retired = ledger.get_epoch(old.epoch_id)
    assert retired is not None and retired.status is EpochStatus.retired
    assert ledger.finish_rebuild(building.epoch_id) == new  # re-run after a crash: no-op


def test_account_replays_return_exists_or_the_differing_field(ledger: SqlLedger) -> None:
    assert ledger.create_account(Account("acme", "USD", 500)) is Result.ok
    assert ledger.create_account(Account("acme", "USD", 500)) is Result.exists
    assert (
        ledger.create_account(Account("acme", "EUR", 500)) is Result.exists_with_different_currency
    )
    assert (
        ledger.create_account(Account("acme", "USD", 0))
        is Result.exists_with_different_credit_limit
    )
    assert ledger.get_account("acme") == Account("acme", "USD", 500)


def test_status_and_credit_limit_changes_apply_to_existing_accounts_only(
    ledger: SqlLedger,
) -> None:
    ledger.create_account(Account("a", "USD"))
    assert ledger.set_status("a", AccountStatus.suspended) is Result.ok
    assert ledger.set_credit_limit("a", 1000) is Result.ok
    assert ledger.get_account("a") == Account("a", "USD", 1000, AccountStatus.suspended)
    assert ledger.set_status("nobody", AccountStatus.closed) is Result.account_not_found
    assert ledger.set_credit_limit("@usage_revenue:USD", 5) is Result.account_not_found


def test_system_accounts_are_created_per_currency_but_never_listed(ledger: SqlLedger) -> None:
    ledger.create_account(Account("a", "USD"))
    ledger.create_account(Account("b", "JPY"))
    with ledger.transaction() as conn:
        ids = set(conn.execute(sa.text("SELECT id FROM accounts WHERE kind='system'")).scalars())
    assert "@usage_revenue:USD" in ids and "@card_clearing:JPY" in ids and len(ids) == 6
    assert [a.id for a in ledger.list_accounts(limit=10)] == ["a", "b"]
    assert ledger.get_account("@usage_revenue:USD") is None


def test_account_listing_is_keyset_paginated_and_bounded(ledger: SqlLedger) -> None:
    for i in range(25):
        ledger.create_account(Account(f"acct-{i:03d}", "USD"))
    seen: list[str] = []
    after = None
    for _ in range(10):
        page = ledger.list_accounts(after=after, limit=10)
        if not page:
            break
        seen += [a.id for a in page]
        after = page[-1].id
    assert seen == sorted(f"acct-{i:03d}" for i in range(25))
    with pytest.raises(UsageError):
        ledger.list_accounts(limit=100_000)


def test_database_errors_become_ledger_errors(tmp_path: Path) -> None:
    with pytest.raises(LedgerError):
        SqlLedger.open(f"sqlite:///{tmp_path}/no/such/dir/ledger.sqlite3")
    with pytest.raises(LedgerError):
        SqlLedger.open("postgresql://postgres@127.0.0.1:1/nothing")
