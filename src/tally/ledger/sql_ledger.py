"""``SqlLedger``: the ledger of record's adapter. Every method is one SQL transaction; database
errors leave it as ``LedgerError`` (``LedgerNotInitialised`` when the schema is missing)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from tally.domain.accounts import Account, AccountStatus, SystemAccount
from tally.domain.events import EventType
from tally.domain.results import Result
from tally.domain.transfers import Transfer
from tally.errors import LedgerError, LedgerNotInitialised
from tally.ledger import (
    sql_accounts,
    sql_apply,
    sql_balances,
    sql_epochs,
    sql_holds,
    sql_intents,
    sql_outbox,
)
from tally.ledger.engine import WRITE_OPTION, create_ledger_engine, is_sqlite_memory
from tally.ledger.migrate import is_up_to_date, upgrade
from tally.ledger.models import (
    ApplyReport,
    CreditIntent,
    DrainedLine,
    Epoch,
    EpochKind,
    EpochStatus,
    EpochView,
    LineBatch,
    RecordedIntent,
    RejectedLine,
    StreamId,
    TransferRecord,
    TransfersPage,
)
from tally.ledger.schema import transfers
from tally.ledger.sql_recharge import RechargeLedger
from tally.ledger.unit import LedgerUnit
from tally.ledger.urls import normalise_url

_MISSING_SCHEMA = ("no such table", "does not exist", "undefinedtable")


def _translate(exc: SQLAlchemyError) -> LedgerError:
    text = str(exc).lower()
    if any(marker in text for marker in _MISSING_SCHEMA):
        return LedgerNotInitialised(f"the ledger schema is missing: {text[:200]}")
    return LedgerError(f"ledger database error: {type(exc).__name__}: {text[:300]}")


def status_event(status: AccountStatus) -> EventType:
    return {
        AccountStatus.active: EventType.account_reinstated,
        AccountStatus.suspended: EventType.account_suspended,
        AccountStatus.closed: EventType.account_closed,
    }[status]


class SqlLedger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> SqlLedger:
        normalised = normalise_url(url)
        if not migrate and normalised.startswith("sqlite") and not is_sqlite_memory(normalised):
            path = sa.engine.make_url(normalised).database or ""
            if not Path(path).exists():  # do not leave an empty file behind
                raise LedgerNotInitialised(f"no ledger database at {path}")
        engine = create_ledger_engine(normalised)
        try:
            if migrate:
                upgrade(engine)
            elif not is_up_to_date(engine):
                raise LedgerNotInitialised("the ledger schema is missing or not up to date")
        except SQLAlchemyError as exc:
            engine.dispose()
            raise _translate(exc) from exc
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> SqlLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def recharges(self) -> RechargeLedger:
        """The auto-recharge tables (rules, recharges, freeze, account events, remediations)."""
        return RechargeLedger(self)

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @contextmanager
    def transaction(self, *, write: bool = False, snapshot: bool = False) -> Iterator[Connection]:
        """One transaction. ``snapshot``: every read sees the same state (PostgreSQL REPEATABLE
        READ; a SQLite read transaction in WAL mode is a snapshot already)."""
        options: dict[str, Any] = {WRITE_OPTION: write}
        if snapshot and self.dialect == "postgresql":
            options["isolation_level"] = "REPEATABLE READ"
        try:
            with self._engine.connect() as conn:
                conn = conn.execution_options(**options)
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise _translate(exc) from exc

    @contextmanager
    def unit(self) -> Iterator[LedgerUnit]:
        """One business step, one write transaction: see ``tally.ledger.unit``."""
        with self.transaction(write=True) as conn:
            yield LedgerUnit(conn)

    # -- epochs ------------------------------------------------------------------------------
    def init_epoch(self, namespace: str, shards: int) -> Epoch:
        with self.transaction(write=True) as conn:
            return sql_epochs.init_epoch(conn, namespace, shards)

    def current_epoch(self) -> Epoch | None:
        with self.transaction() as conn:
            return sql_epochs.epoch_with_status(conn, EpochStatus.current)

    def building_epoch(self) -> Epoch | None:
        with self.transaction() as conn:
            return sql_epochs.epoch_with_status(conn, EpochStatus.building)

    def get_epoch(self, epoch_id: str) -> Epoch | None:
        with self.transaction() as conn:
            return sql_epochs.get_epoch(conn, epoch_id)

    def begin_rebuild(
        self, namespace: str, shards: int, *, kind: EpochKind = EpochKind.rebuild
    ) -> Epoch:
        with self.transaction(write=True) as conn:
            return sql_epochs.begin_rebuild(conn, namespace, shards, kind)

    def finish_rebuild(self, epoch_id: str) -> Epoch:
        with self.transaction(write=True) as conn:
            return sql_epochs.finish_rebuild(conn, epoch_id)

    def epoch_view(self) -> EpochView | None:
        """The current epoch with each shard's own epoch id (``EpochView``)."""
        with self.transaction() as conn:
            return sql_epochs.epoch_view(conn)

    def begin_shard_rebuild(self, shard: int) -> tuple[EpochView, str]:
        with self.transaction(write=True) as conn:
            return sql_epochs.begin_shard_rebuild(conn, shard)

    def finish_shard_rebuild(self, shard_epoch_id: str) -> EpochView:
        with self.transaction(write=True) as conn:
            return sql_epochs.finish_shard_rebuild(conn, shard_epoch_id)

    # -- accounts ----------------------------------------------------------------------------
    def create_account(self, account: Account) -> Result:
        with self.transaction(write=True) as conn:
            return sql_accounts.create_account(conn, account)

    def get_account(self, account_id: str) -> Account | None:
        with self.transaction() as conn:
            return sql_accounts.get_account(conn, account_id)

    def get_accounts(self, ids: Sequence[str]) -> dict[str, Account]:
        with self.transaction() as conn:
            return sql_accounts.get_accounts(conn, ids)

    def set_status(
        self, account_id: str, status: AccountStatus, *, cause: str = "operator"
    ) -> Result:
        """The status and, when it changed, its outbox event, in one transaction."""
        with self.transaction(write=True) as conn:
            result, before = sql_accounts.change_status(conn, account_id, status)
            if before is not None:
                sql_outbox.emit(
                    conn,
                    status_event(AccountStatus(status)),
                    {"account_id": account_id, "cause": cause, "from": before.value},
                    account_id=account_id,
                )
            return result

    def set_credit_limit(self, account_id: str, limit_minor: int) -> Result:
        with self.transaction(write=True) as conn:
            return sql_accounts.set_credit_limit(conn, account_id, limit_minor)

    def list_accounts(self, *, after: str | None = None, limit: int = 100) -> list[Account]:
        with self.transaction() as conn:
            return sql_accounts.list_accounts(conn, after=after, limit=limit)

    def count_accounts(self) -> int:
        with self.transaction() as conn:
            return sql_accounts.count_accounts(conn)

    # -- credit intents ----------------------------------------------------------------------
    def record_credit_intent(
        self, transfer: Transfer, source: SystemAccount = SystemAccount.card_clearing
    ) -> RecordedIntent:
        with self.transaction(write=True) as conn:
            return sql_intents.record_credit_intent(conn, transfer, source)

    def get_credit_intent(self, intent_id: str) -> CreditIntent | None:
        with self.transaction() as conn:
            return sql_intents.get_credit_intent(conn, intent_id)

    def settle_credit_intent(self, intent_id: str, result: Result) -> bool:
        with self.transaction(write=True) as conn:
            return sql_intents.settle_one(conn, intent_id, result)

    def unsettled_credit_intents(
        self, *, older_than_ms: int | None = None, limit: int = 100
    ) -> list[CreditIntent]:
        with self.transaction() as conn:
            return sql_intents.unsettled_credit_intents(
                conn, older_than_ms=older_than_ms, limit=limit
            )

    def count_unsettled_credit_intents(self) -> int:
        with self.transaction() as conn:
            return sql_intents.count_unsettled(conn)

    # -- journal -----------------------------------------------------------------------------
    def apply_journal(
        self,
        batch: Sequence[DrainedLine],
        rejected: Sequence[RejectedLine] = (),
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> ApplyReport:
        """Idempotent: applying the same lines again changes nothing (see ``sql_apply``)."""
        with self.transaction(write=True) as conn:
            return sql_apply.apply_journal(conn, batch, rejected, before_commit=before_commit)

    def apply_batch(
        self, batch: LineBatch, *, before_commit: Callable[[], None] | None = None
    ) -> ApplyReport:
        """``apply_journal`` for lines the drainer parsed into columns (``parse_entry_into``)."""
        with self.transaction(write=True) as conn:
            return sql_apply.apply_batch(conn, batch, before_commit=before_commit)

    def journal_conflicts_count(self) -> int:
        with self.transaction() as conn:
            return sql_balances.count_journal_conflicts(conn)

    # -- balances and transfers ----------------------------------------------------------------
    def balance_of(self, account_id: str) -> int:
        return self.balances([account_id])[account_id]

    def balances(self, ids: Collection[str]) -> dict[str, int]:
        with self.transaction(snapshot=True) as conn:
            return sql_balances.balances(conn, ids)

    def conservation(self) -> dict[str, int]:
        with self.transaction(snapshot=True) as conn:
            return sql_balances.conservation(conn)

    def transfers_page(
        self, account_id: str, *, after: str | None = None, limit: int = 100
    ) -> TransfersPage:
        with self.transaction() as conn:
            return sql_balances.transfers_page(conn, account_id, after=after, limit=limit)

    def transfers_after(self, after: str | None, limit: int) -> list[TransferRecord]:
        with self.transaction() as conn:
            return sql_balances.transfers_after(conn, after, limit)

    def count_transfers(self) -> int:
        with self.transaction() as conn:
            return sql_balances.count_rows(conn, transfers)

    def ledger_view_as_of(
        self, ids: Sequence[str], *, epoch_id: str, upto: StreamId, probe_ids: Sequence[str]
    ) -> tuple[dict[str, int], set[str]]:
        """For reconcile, in ONE snapshot: balances as of stream id ``upto`` of the current
        epoch, and which of ``probe_ids`` (journal lines read from Redis) are already stored."""
        with self.transaction(snapshot=True) as conn:
            view = sql_balances.balances_as_of(conn, ids, epoch_id=epoch_id, upto=upto)
            return view, sql_balances.existing_transfer_ids(conn, probe_ids)

    def lines_beyond_journal(
        self, *, epoch_id: str, shard: int, journal_position: Callable[[], StreamId]
    ) -> dict[str, tuple[int, int]]:
        """For reconcile: this epoch's ledger lines of ``shard`` that the store's journal never
        generated, as {account: (lines, signed sum)}; empty when the ledger is not ahead.

        Order matters: the SQL snapshot is taken first, THEN ``journal_position()`` reads the
        journal's last generated id P. Every line in the snapshot was drained from a journal
        before the snapshot, so on a store that kept everything its position is <= P; a line
        beyond P was drained from a store this one does not continue (e.g. a primary lost in a
        failover, whose last writes no replica had)."""
        with self.transaction(snapshot=True) as conn:
            # the first read fixes the snapshot; ``epoch_id`` may be one shard's own epoch
            if not sql_epochs.epoch_known(conn, epoch_id):
                raise LedgerNotInitialised(f"no epoch {epoch_id} in the ledger")
            upto = journal_position()
            if not sql_balances.has_lines_beyond(conn, epoch_id=epoch_id, shard=shard, upto=upto):
                return {}
            return sql_balances.sums_beyond(conn, epoch_id=epoch_id, shard=shard, upto=upto)

    # -- holds (sql_holds) ---------------------------------------------------------------------
    def get_hold(self, hold_id: str) -> sql_holds.LedgerHold | None:
        with self.transaction() as conn:
            return sql_holds.get_hold(conn, hold_id)

    def holds_after(self, after: str | None, limit: int) -> list[sql_holds.LedgerHold]:
        with self.transaction() as conn:
            return sql_holds.holds_after(conn, after, limit)

    def count_holds(self) -> int:
        with self.transaction() as conn:
            return sql_balances.count_rows(conn, sql_holds.holds)

    def held(self, ids: Collection[str]) -> dict[str, int]:
        """The sum of each account's open holds, as drained."""
        with self.transaction(snapshot=True) as conn:
            return sql_holds.held(conn, ids)

    def held_view_as_of(
        self,
        ids: Sequence[str],
        *,
        epoch_id: str,
        upto: StreamId,
        probe: Sequence[tuple[str, str]],
    ) -> tuple[dict[str, int], set[tuple[str, str]]]:
        """For reconcile, in ONE snapshot: held sums as of stream id ``upto``, and which of the
        (hold id, event) pairs read from the journal are already stored."""
        with self.transaction(snapshot=True) as conn:
            view = sql_holds.held_as_of(conn, ids, epoch_id=epoch_id, upto=upto)
            return view, sql_holds.stored_events(conn, probe)
