"""Balance holds (authorisation holds, RFC 4006 reservations, TigerBeetle pending transfers):
the codes, the bounds, the input checks and the reference rules ``store/lua/hold.lua`` must
agree with. Pure Python, no I/O; the clock is a parameter (the store uses the server's ``TIME``).

A hold reserves ``amount_minor`` of an account's AVAILABLE balance
(``balance - held + credit limit``) until it is captured (the captured part becomes a debit, the
rest is released; one capture per hold), voided (all released) or expires (all released; it can
never be captured afterwards). Debits see the available balance too, so two sessions never
spend the same money.

Idempotent by hold id with TigerBeetle's replay semantics: the same place, capture or void again
returns the first outcome (``replayed``); a place with other parameters is ``hold_id_conflict``
and writes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import NamedTuple

from tally.domain.accounts import AccountStatus
from tally.domain.ids import check_id
from tally.domain.limits import AMOUNT_MINOR_MAX
from tally.domain.rules import Books, recharge_id_for
from tally.errors import UsageError

#: The longest a hold may be placed for: 7 days (card authorisations last about that long).
HOLD_EXPIRES_S_MAX = 7 * 86_400
HOLD_EXPIRES_MS_MAX = HOLD_EXPIRES_S_MAX * 1000
#: Holds one sweeper call releases at most (per shard).
HOLD_SWEEP_MAX = 500


class InvalidExpiry(UsageError):
    hint = f"expires_in_s is a whole number of seconds, 1..{HOLD_EXPIRES_S_MAX}"


class HoldCode(IntEnum):
    """Stable codes (never renumber: they are stored in Redis and the ledger). 7, 8, 9 and 11
    mean what ``Result`` says; the hold-only ones start at 20."""

    ok = 0
    insufficient_funds = 7
    account_not_found = 8
    account_not_active = 9
    amount_invalid = 11
    hold_id_conflict = 20  # the hold id was placed with other parameters: nothing written
    hold_not_found = 21
    hold_expired = 22  # the hold's expiry passed: it was released, it can never be captured
    hold_already_captured = 23  # a void, or a capture of another amount, after the capture
    hold_voided = 24  # a capture after a void
    capture_exceeds_hold = 25


class HoldStatus(StrEnum):
    open = "open"
    captured = "captured"
    voided = "voided"
    expired = "expired"
    refused = "refused"  # the place was refused (its code says why); kept for replays

    @property
    def code(self) -> str:
        return {"refused": "r", "expired": "x"}.get(self.value, self.value[0])

    @classmethod
    def from_code(cls, code: str) -> HoldStatus:
        return {s.code: s for s in cls}[code]


class HoldOutcome(NamedTuple):
    """What the store answered. ``replayed``: the same request came before; this is its first
    outcome. ``balance_minor`` / ``held_minor``: the account's right after the first application
    (None when the account does not exist). ``capture_id``: the debit a capture booked."""

    hold_id: str
    code: HoldCode
    status: HoldStatus | None
    account_id: str | None
    amount_minor: int | None
    captured_minor: int | None
    expires_at_ms: int | None
    balance_minor: int | None
    held_minor: int | None
    replayed: bool = False
    recharge_id: str | None = None

    @property
    def capture_id(self) -> str | None:
        return capture_transfer_id(self.hold_id) if self.status is HoldStatus.captured else None


def check_expires_in_ms(value: object) -> int:
    if type(value) is not int or not 1 <= value <= HOLD_EXPIRES_MS_MAX:
        raise InvalidExpiry(f"expiry {value!r:.40} ms is outside 1..{HOLD_EXPIRES_MS_MAX}")
    return value


def check_expires_in_s(value: object) -> int:
    """The API's and CLI's unit; the store takes milliseconds (tests use short expiries)."""
    if type(value) is not int or not 1 <= value <= HOLD_EXPIRES_S_MAX:
        raise InvalidExpiry(f"expires_in_s {value!r:.40} is outside 1..{HOLD_EXPIRES_S_MAX}")
    return value


def check_hold_id(value: object) -> str:
    return check_id(value, "hold id")


def capture_transfer_id(hold_id: str) -> str:
    """The debit a capture books: ``hc-`` + 29 hex of the hold id's SHA1 (as recharge ids are
    derived from their debit's id); callers may not use ids of this form (domain/ids.py)."""
    return "hc-" + hashlib.sha1(hold_id.encode()).hexdigest()[:29]


# -- the reference model -----------------------------------------------------------------------
@dataclass(slots=True)
class HoldRecord:
    account_id: str
    amount_minor: int
    expires_in_ms: int
    currency: str
    expires_at_ms: int
    status: HoldStatus
    code: HoldCode  # the place's outcome
    #: (balance, held) right after the place, the capture and the void
    placed: tuple[int, int] | None
    captured: tuple[int, int] | None = None
    voided: tuple[int, int] | None = None
    captured_minor: int | None = None
    recharge_id: str | None = None


@dataclass(slots=True)
class HoldBook:
    """What ``hold.lua`` keeps: the records by hold id (the account books are ``rules.Books``)."""

    holds: dict[str, HoldRecord] = field(default_factory=dict)
    #: What a ledger would see: (event letter p/c/v/x, hold id, amount), in order.
    events: list[tuple[str, str, int]] = field(default_factory=list)


def _valid_amount(amount: int) -> bool:
    return type(amount) is int and 0 < amount <= AMOUNT_MINOR_MAX


def _outcome(
    hold_id: str,
    rec: HoldRecord,
    code: HoldCode,
    *,
    replayed: bool = False,
    after: tuple[int, int] | None = None,
    status: HoldStatus | None = None,
    recharge_id: str | None = None,
) -> HoldOutcome:
    return HoldOutcome(
        hold_id,
        code,
        status or rec.status,
        rec.account_id,
        rec.amount_minor,
        rec.captured_minor,
        rec.expires_at_ms,
        None if after is None else after[0],
        None if after is None else after[1],
        replayed,
        recharge_id,
    )


def _bare(hold_id: str, code: HoldCode) -> HoldOutcome:
    return HoldOutcome(hold_id, code, None, None, None, None, None, None, None)


def expire_due(books: Books, hb: HoldBook, hold_id: str, now_ms: int) -> bool:
    """Release an open hold whose expiry has passed; True when it did."""
    rec = hb.holds.get(hold_id)
    if rec is None or rec.status is not HoldStatus.open or now_ms < rec.expires_at_ms:
        return False
    book = books.accounts[rec.account_id]
    book.held_minor -= rec.amount_minor
    rec.status = HoldStatus.expired
    hb.events.append(("x", hold_id, rec.amount_minor))
    return True


def place(
    books: Books,
    hb: HoldBook,
    hold_id: str,
    account_id: str,
    amount: int,
    expires_in_ms: int,
    now_ms: int,
) -> HoldOutcome:
    """The first outcome of a place is replayed exactly: status ``open`` (or ``refused``) and the
    balance and held amount right after it, whatever happened to the hold since."""
    rec = hb.holds.get(hold_id)
    if rec is not None:
        if (rec.account_id, rec.amount_minor, rec.expires_in_ms) != (
            account_id,
            amount,
            expires_in_ms,
        ):
            return _bare(hold_id, HoldCode.hold_id_conflict)
        first = HoldStatus.refused if rec.code else HoldStatus.open
        out = _outcome(hold_id, rec, rec.code, replayed=True, after=rec.placed, status=first)
        return out._replace(captured_minor=None)
    if not _valid_amount(amount):
        return _bare(hold_id, HoldCode.amount_invalid)
    book = books.accounts.get(account_id)
    if book is None:
        code = HoldCode.account_not_found
    elif book.status is not AccountStatus.active:
        code = HoldCode.account_not_active
    elif amount > book.balance_minor - book.held_minor + book.credit_limit_minor:
        code = HoldCode.insufficient_funds
    else:
        code = HoldCode.ok
        book.held_minor += amount
    rec = HoldRecord(
        account_id,
        amount,
        expires_in_ms,
        book.currency if book is not None else "",
        now_ms + expires_in_ms,
        HoldStatus.open if code is HoldCode.ok else HoldStatus.refused,
        code,
        None if book is None else (book.balance_minor, book.held_minor),
    )
    hb.holds[hold_id] = rec
    if book is not None:
        hb.events.append(("p", hold_id, amount))
    return _outcome(hold_id, rec, code, after=rec.placed)


def capture(books: Books, hb: HoldBook, hold_id: str, amount: int, now_ms: int) -> HoldOutcome:
    """One capture per hold: ``amount`` (at most the held amount) becomes a debit, the rest is
    released. The same capture again replays; another amount is ``hold_already_captured``."""
    rec = hb.holds.get(hold_id)
    if rec is None or rec.status is HoldStatus.refused:
        return _bare(hold_id, HoldCode.hold_not_found)
    if not _valid_amount(amount):
        return _outcome(hold_id, rec, HoldCode.amount_invalid)
    if rec.status is HoldStatus.captured:
        if rec.captured_minor == amount:
            return _outcome(
                hold_id,
                rec,
                HoldCode.ok,
                replayed=True,
                after=rec.captured,
                recharge_id=rec.recharge_id,
            )
        return _outcome(hold_id, rec, HoldCode.hold_already_captured)
    if rec.status is HoldStatus.voided:
        return _outcome(hold_id, rec, HoldCode.hold_voided)
    expire_due(books, hb, hold_id, now_ms)
    if rec.status is HoldStatus.expired:
        return _outcome(hold_id, rec, HoldCode.hold_expired)
    if amount > rec.amount_minor:
        return _outcome(hold_id, rec, HoldCode.capture_exceeds_hold)
    book = books.accounts[rec.account_id]
    book.held_minor -= rec.amount_minor
    book.balance_minor -= amount
    rec.status = HoldStatus.captured
    rec.captured_minor = amount
    rec.captured = (book.balance_minor, book.held_minor)
    if (
        book.threshold_minor is not None
        and book.open_recharge is None
        and book.balance_minor - book.held_minor < book.threshold_minor
    ):
        rec.recharge_id = book.open_recharge = recharge_id_for(capture_transfer_id(hold_id))
    hb.events.append(("c", hold_id, amount))
    return _outcome(hold_id, rec, HoldCode.ok, after=rec.captured, recharge_id=rec.recharge_id)


def void(books: Books, hb: HoldBook, hold_id: str, now_ms: int) -> HoldOutcome:
    rec = hb.holds.get(hold_id)
    if rec is None or rec.status is HoldStatus.refused:
        return _bare(hold_id, HoldCode.hold_not_found)
    if rec.status is HoldStatus.voided:
        return _outcome(hold_id, rec, HoldCode.ok, replayed=True, after=rec.voided)
    if rec.status is HoldStatus.captured:
        return _outcome(hold_id, rec, HoldCode.hold_already_captured)
    expire_due(books, hb, hold_id, now_ms)
    if rec.status is HoldStatus.expired:
        return _outcome(hold_id, rec, HoldCode.hold_expired)
    book = books.accounts[rec.account_id]
    book.held_minor -= rec.amount_minor
    rec.status = HoldStatus.voided
    rec.voided = (book.balance_minor, book.held_minor)
    hb.events.append(("v", hold_id, rec.amount_minor))
    return _outcome(hold_id, rec, HoldCode.ok, after=rec.voided)


def view(hb: HoldBook, hold_id: str, now_ms: int) -> HoldOutcome:
    """A hold as it stands (``get``): an open hold past its expiry reads ``expired``."""
    rec = hb.holds.get(hold_id)
    if rec is None:
        return _bare(hold_id, HoldCode.hold_not_found)
    due = rec.status is HoldStatus.open and now_ms >= rec.expires_at_ms
    return _outcome(hold_id, rec, rec.code, status=HoldStatus.expired if due else None)
