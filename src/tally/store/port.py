"""The balance-store port: what the service layer needs from a store. ``RedisStore`` is the real
adapter, ``FakeStore`` the in-memory one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from tally.domain.accounts import Account, AccountState
from tally.domain.holds import HoldOutcome
from tally.domain.results import Result
from tally.store.redis_store import Applied, RawTransfer, RechargeMarker


class BalanceStore(Protocol):
    epoch_id: str
    shard_epoch_ids: tuple[str, ...]  # each shard's epoch id when one differs, else ()

    def set_epoch(self, epoch_id: str, shard_epoch_ids: Sequence[str] = ...) -> None: ...

    def reconnect(self) -> bool: ...

    def reconnect_if_moved(self) -> bool: ...

    def load_scripts(self) -> None: ...

    def apply(self, transfers: Sequence[RawTransfer]) -> Applied: ...

    def upsert_account(self, account: Account) -> Result: ...

    def recharge_marker(self, account_id: str, op: str, value: str) -> RechargeMarker: ...

    def read_accounts(self, account_ids: Iterable[str]) -> dict[str, AccountState | None]: ...

    # -- holds (domain.holds; lua/hold.lua) -----------------------------------------------------
    def place_hold(
        self, hold_id: str, account_id: str, amount_minor: int, expires_in_ms: int
    ) -> HoldOutcome: ...

    def capture_hold(self, hold_id: str, amount_minor: int) -> HoldOutcome: ...

    def void_hold(self, hold_id: str) -> HoldOutcome: ...

    def get_hold(self, hold_id: str) -> HoldOutcome: ...

    def sweep_holds(self, limit: int = ...) -> int: ...
