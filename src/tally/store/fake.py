"""An in-memory store with the real store's interface and the domain's reference rules, for
unit tests of the layers above (as httpx ships MockTransport). Not thread-safe; no journal."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from tally.domain import holds
from tally.domain.accounts import Account, AccountState
from tally.domain.results import Result
from tally.domain.rules import AccountBook, Books, apply_transfer, recharge_marker
from tally.errors import StoreLost, UsageError
from tally.store.redis_store import MARKER_OPS, Applied, RawTransfer, RechargeMarker


class FakeStore:
    def __init__(self, epoch_id: str = "E-fake") -> None:
        self.epoch_id = epoch_id
        self.books = Books()
        self.holds = holds.HoldBook()
        self.lost = False

    def wipe(self) -> None:
        """What a restart with a missing AOF does: everything gone, epoch included."""
        self.books = Books()
        self.holds = holds.HoldBook()
        self.lost = True

    shard_epoch_ids: tuple[str, ...] = ()  # one store, one epoch

    def set_epoch(self, epoch_id: str, shard_epoch_ids: Sequence[str] = ()) -> None:
        self.epoch_id = epoch_id
        self.shard_epoch_ids = tuple(shard_epoch_ids)
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
                    book.held_minor,
                )
            )
        return out

    # -- holds: the domain's reference rules, by the local clock --------------------------------
    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)

    def place_hold(
        self, hold_id: str, account_id: str, amount_minor: int, expires_in_ms: int
    ) -> holds.HoldOutcome:
        self._check()
        return holds.place(
            self.books, self.holds, hold_id, account_id, amount_minor, expires_in_ms, self._now_ms()
        )

    def capture_hold(self, hold_id: str, amount_minor: int) -> holds.HoldOutcome:
        self._check()
        return holds.capture(self.books, self.holds, hold_id, amount_minor, self._now_ms())

    def void_hold(self, hold_id: str) -> holds.HoldOutcome:
        self._check()
        return holds.void(self.books, self.holds, hold_id, self._now_ms())

    def get_hold(self, hold_id: str) -> holds.HoldOutcome:
        self._check()
        return holds.view(self.holds, hold_id, self._now_ms())

    def sweep_holds(self, limit: int = holds.HOLD_SWEEP_MAX) -> int:
        """The fake has one shard: due holds, at most ``limit``."""
        self._check()
        now, released = self._now_ms(), 0
        for hold_id in list(self.holds.holds):
            if released >= limit:
                break
            released += holds.expire_due(self.books, self.holds, hold_id, now)
        return released
