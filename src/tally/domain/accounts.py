"""Accounts: customers hold prepaid balances; system accounts are the other side of every entry."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tally.domain.ids import check_id
from tally.domain.money import check_currency, check_limit_minor


class AccountStatus(StrEnum):
    active = "active"
    suspended = "suspended"
    closed = "closed"

    @property
    def code(self) -> str:
        """One letter, as stored in Redis."""
        return self.value[0]

    @classmethod
    def from_code(cls, code: str) -> AccountStatus:
        return {"a": cls.active, "s": cls.suspended, "c": cls.closed}[code]


class SystemAccount(StrEnum):
    """The other side of customer entries, one per currency (``@usage_revenue:USD``)."""

    usage_revenue = "usage_revenue"  # debits for usage land here
    card_clearing = "card_clearing"  # money in from cards (recharges, top-ups) comes from here
    adjustments = "adjustments"  # operator credits and corrections

    def account_id(self, currency: str) -> str:
        return f"@{self.value}:{check_currency(currency)}"


def is_system_account_id(account_id: str) -> bool:
    return account_id.startswith("@")


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    currency: str
    credit_limit_minor: int = 0
    status: AccountStatus = AccountStatus.active

    def __post_init__(self) -> None:
        check_id(self.id, "account id")
        check_currency(self.currency)
        check_limit_minor(self.credit_limit_minor)


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account as the store holds it: its definition plus the hot balance."""

    account: Account
    balance_minor: int
    #: The sum of the account's open holds (``domain.holds``).
    held_minor: int = 0

    @property
    def available_minor(self) -> int:
        """What a debit or a new hold may use: balance - open holds + credit limit."""
        return self.balance_minor - self.held_minor + self.account.credit_limit_minor
