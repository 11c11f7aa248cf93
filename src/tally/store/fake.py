"""An in-memory store with the real store's interface and the domain's reference rules, for
unit tests of the layers above (as httpx ships MockTransport). Not thread-safe; no journal."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tally.domain.accounts import Account, AccountState
from tally.domain.results import Result
from tally.domain.rules import AccountBook, Books, apply_transfer, recharge_marker
from tally.errors import StoreLost, UsageError
from tally.store.redis_store import MARKER_OPS, Applied, RawTransfer, RechargeMarker


class FakeStore:
    def __init__(self, epoch_id: str = "E-fake") -> None:
        self.epoch_id = epoch_id
        self.books = Books()
        self.lost = False

    def wipe(self) -> None:
        """What a restart with a missing AOF does: everything gone, epoch included."""
        self.books = Books()
        self.lost = True

    def set_epoch(self, epoch_id: str) -> None:
        self.epoch_id = epoch_id
        self.lost = False

    def reconnect(self) -> bool:
        return False

    def reconnect_if_moved(self) -> bool:
        return False

    def _check(self) -> None:
        if self.lost:
            raise StoreLost("fake store was wiped")

    def load_scripts(self) -> None:
        return None

    def apply(self, transfers: Sequence[RawTransfer]) -> Applied:
        self._check()
        return Applied([apply_transfer(self.books, *t) for t in transfers])

    def recharge_marker(self, account_id: str, op: str, value: str) -> RechargeMarker:
        self._check()
        if op not in MARKER_OPS:
            raise UsageError(f"unknown recharge marker op {op!r}")
        return RechargeMarker(*recharge_marker(self.books, account_id, op, value))

    def upsert_account(self, account: Account) -> Result:
        self._check()
        book = self.books.accounts.get(account.id)
        if book is not None and book.currency != account.currency:
            return Result.currency_mismatch
        if book is None:
            book = self.books.accounts[account.id] = AccountBook(account.currency)
        book.status = account.status
        book.credit_limit_minor = account.credit_limit_minor
        return Result.ok

    def read_accounts(self, account_ids: Iterable[str]) -> dict[str, AccountState | None]:
        self._check()
        out: dict[str, AccountState | None] = {}
        for aid in account_ids:
            book = self.books.accounts.get(aid)
            out[aid] = (
                None
                if book is None
                else AccountState(
                    Account(aid, book.currency, book.credit_limit_minor, book.status),
                    book.balance_minor,
                )
            )
        return out
