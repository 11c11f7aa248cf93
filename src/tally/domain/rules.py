"""The transfer rules in plain Python: the reference the Lua script must agree with.

``apply_transfer`` is what ``store/lua/transfer.lua`` does for one transfer; the in-memory fake
store is built on it, and a hypothesis test checks the real script against it, operation by
operation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from tally.domain.accounts import AccountStatus
from tally.domain.limits import AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX, occurred_bounds_ms
from tally.domain.results import Result
from tally.domain.transfers import TransferResult


@dataclass(slots=True)
class AccountBook:
    currency: str
    credit_limit_minor: int = 0
    status: AccountStatus = AccountStatus.active
    balance_minor: int = 0
    #: Auto-recharge mirror: the threshold while autopay is on, and the open recharge's id.
    threshold_minor: int | None = None
    open_recharge: str | None = None
    #: Open holds on the account (``domain.holds``): debits and new holds see the available
    #: balance, ``balance - held + credit limit``.
    held_minor: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    kind: str
    account_id: str
    amount_minor: int
    currency: str
    result: Result
    balance_minor: int | None


@dataclass(slots=True)
class Books:
    accounts: dict[str, AccountBook] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)
    #: The idempotency window's previous generation (``rotate_records``): still replayed.
    previous: dict[str, Record] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WindowClock:
    """What the script reads for the age guard: the Redis server's clock and the window."""

    now_ms: int
    window_ms: int


def occurred_guard(occurred_at_ms: int | None, clock: WindowClock | None) -> Result | None:
    """The window's age guard: a refusal code, or None when the transfer may be decided. Asked
    only for an id without a record (a replay answers first, whatever its occurred_at).
    ``occurred_at_ms`` None: the event occurred now, by the server's clock (always inside)."""
    if clock is None or occurred_at_ms is None or clock.window_ms <= 0:
        return None
    age_max_ms, skew_ms = occurred_bounds_ms(clock.window_ms)
    if occurred_at_ms < clock.now_ms - age_max_ms:
        return Result.occurred_outside_window
    if occurred_at_ms > clock.now_ms + skew_ms:
        return Result.occurred_in_future
    return None


def rotate_records(books: Books) -> None:
    """The window turns over: the previous generation is dropped whole, the current one becomes
    the previous one (the store does this per tx shard, by the server's clock)."""
    books.previous, books.records = books.records, {}


def _replay(
    rec: Record, kind: str, account_id: str, amount: int, currency: str
) -> tuple[Result, int | None]:
    if rec.kind != kind:
        return Result.exists_with_different_kind, None
    if rec.account_id != account_id:
        return Result.exists_with_different_account, None
    if currency and rec.currency != currency:
        return Result.exists_with_different_currency, None
    if rec.amount_minor != amount:
        return Result.exists_with_different_amount, None
    return rec.result, rec.balance_minor


def _decide(book: AccountBook | None, kind: str, amount: int, currency: str) -> Result:
    if book is None:
        return Result.account_not_found
    if currency and book.currency != currency:
        return Result.currency_mismatch
    if not 0 < amount <= AMOUNT_MINOR_MAX:
        return Result.amount_invalid
    if kind == "d":
        if book.status is not AccountStatus.active:
            return Result.account_not_active
        if book.balance_minor - book.held_minor - amount < -book.credit_limit_minor:
            return Result.insufficient_funds
        return Result.ok
    if book.status is AccountStatus.closed:
        return Result.account_not_active
    if book.balance_minor + amount > BALANCE_MINOR_MAX:
        return Result.balance_limit_exceeded
    return Result.ok


def recharge_id_for(debit_transfer_id: str) -> str:
    """The id of the recharge a debit opens: derived from the debit's (unique) transfer id."""
    return "rc-" + hashlib.sha1(debit_transfer_id.encode()).hexdigest()[:29]


def opens_recharge(book: AccountBook | None, kind: str, code: Result) -> bool:
    """A debit opens a recharge when it leaves an autopay account below its threshold and none
    is open (the check and the marker write are one step in the Lua script)."""
    return (
        book is not None
        and book.threshold_minor is not None
        and book.open_recharge is None
        and kind == "d"
        and code in (Result.ok, Result.insufficient_funds)
        and book.balance_minor - book.held_minor < book.threshold_minor  # the available balance
    )


def recharge_marker(books: Books, account_id: str, op: str, value: str) -> tuple[int, str | None]:
    """``lua/recharge.lua``: (code, open recharge after the op)."""
    book = books.accounts.get(account_id)
    if book is None:
        return 8, None
    if op == "rule":
        book.threshold_minor = int(value) if value else None
        return 0, book.open_recharge
    if op == "close":
        if book.open_recharge == value:
            book.open_recharge = None
            return 0, None
        return 1, book.open_recharge
    if op == "open":
        if book.open_recharge is not None:
            return (1 if book.open_recharge == value else 3), book.open_recharge
        book.open_recharge = value
        return 0, value
    raise ValueError(f"unknown recharge marker op {op!r}")


def apply_transfer(
    books: Books,
    transfer_id: str,
    kind: str,
    account_id: str,
    amount: int,
    currency: str,
    occurred_at_ms: int | None = None,
    clock: WindowClock | None = None,
) -> TransferResult:
    """Apply one transfer (kind ``d`` or ``c``; currency '' means the account's own).
    ``clock``: the window's age guard applies (None: no window, records kept forever)."""
    rec = books.records.get(transfer_id) or books.previous.get(transfer_id)
    if rec is not None:
        code, bal = _replay(rec, kind, account_id, amount, currency)
        return TransferResult(transfer_id, code, bal, True)
    book = books.accounts.get(account_id)
    refused = occurred_guard(occurred_at_ms, clock)
    if refused is not None:  # nothing written: no record, no balance change, no journal line
        return TransferResult(transfer_id, refused, book.balance_minor if book else None)
    code = _decide(book, kind, amount, currency)
    if code is Result.ok and book is not None:
        book.balance_minor += -amount if kind == "d" else amount
    balance = book.balance_minor if book is not None else None
    opened = None
    if code is not Result.amount_invalid:
        # the currency as sent ('' = the account's own): replays compare with what was sent
        cur = currency or (book.currency if book is not None else "")
        books.records[transfer_id] = Record(kind, account_id, amount, cur, code, balance)
        if book is not None and opens_recharge(book, kind, code):
            opened = book.open_recharge = recharge_id_for(transfer_id)
    return TransferResult(transfer_id, code, balance, False, opened)
