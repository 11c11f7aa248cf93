"""Transfers: one movement of money between a customer account and a system account."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from tally.domain.accounts import SystemAccount
from tally.domain.ids import check_id
from tally.domain.limits import OCCURRED_AT_MS_MAX
from tally.domain.money import check_amount_minor, check_currency
from tally.domain.results import Result
from tally.errors import UsageError


class TransferKind(StrEnum):
    debit = "debit"  # usage: customer -> usage_revenue
    credit = "credit"  # money in: card_clearing / adjustments -> customer

    @property
    def code(self) -> str:
        return self.value[0]

    @classmethod
    def from_code(cls, code: str) -> TransferKind:
        return {"d": cls.debit, "c": cls.credit}[code]


@dataclass(frozen=True, slots=True)
class Transfer:
    id: str
    kind: TransferKind
    account_id: str
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        check_id(self.id, "transfer id")
        check_id(self.account_id, "account id")
        check_amount_minor(self.amount_minor)
        check_currency(self.currency)


class TransferResult(NamedTuple):
    """What the store answered for one transfer (a NamedTuple: batches make many of these).

    ``replayed``: the id was seen before; ``result`` is then the first outcome again, or an
    ``exists_with_different_*`` conflict. ``balance_minor``: the balance right after the first
    application (for a refusal, the balance at that time; None when the account did not exist or
    for a conflict). ``recharge_id``: the auto-recharge this debit opened in the same atomic
    step (on the first application only, never on a replay)."""

    transfer_id: str
    result: Result
    balance_minor: int | None
    replayed: bool = False
    recharge_id: str | None = None


def counterparty(kind: TransferKind, currency: str, source: SystemAccount | None = None) -> str:
    """The system account on the other side of a customer transfer."""
    if kind is TransferKind.debit:
        return SystemAccount.usage_revenue.account_id(currency)
    return (source or SystemAccount.card_clearing).account_id(currency)


def parse_occurred_at(value: int | str) -> int:
    """A transfer's occurred_at as epoch ms, from epoch ms (an int, or all digits) or an RFC 3339
    time with an offset (a bare local time is ambiguous). Raises ``UsageError``."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        value = int(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value) if len(value) <= 40 else None
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None or "T" not in value.upper():
            raise UsageError(
                f"occurred_at {value[:40]!r} is neither epoch milliseconds nor an RFC 3339 time "
                "with an offset (e.g. 2026-12-04T06:00:00Z)"
            )
        value = int(moment.timestamp() * 1000)  # float seconds are exact to about 1 µs here
    if type(value) is not int or not 0 <= value <= OCCURRED_AT_MS_MAX:
        raise UsageError(f"occurred_at must be 0..{OCCURRED_AT_MS_MAX} epoch ms, got {value!r}")
    return value
