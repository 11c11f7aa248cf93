"""Money: integer minor units with an ISO 4217 currency. Never floats.

Decimal strings (``"12.34"``) are parsed exactly; a value with more decimals than the currency
has, a sign, an exponent or anything but digits and one point is refused, not rounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tally.domain.limits import AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX
from tally.errors import InvalidAmount, UnknownCurrency

# ISO 4217 code -> minor-unit exponent. The currencies a prepaid platform bills in; the full
# table is not needed and a short one is easy to review. Add a code here to support it.
CURRENCY_EXPONENTS: dict[str, int] = {
    "AED": 2, "AUD": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2, "CLP": 0, "CNY": 2, "CZK": 2,
    "DKK": 2, "EUR": 2, "GBP": 2, "HKD": 2, "HUF": 2, "IDR": 2, "ILS": 2, "INR": 2, "ISK": 0,
    "JOD": 3, "JPY": 0, "KRW": 0, "KWD": 3, "MXN": 2, "MYR": 2, "NOK": 2, "NZD": 2, "OMR": 3,
    "PHP": 2, "PLN": 2, "RON": 2, "SAR": 2, "SEK": 2, "SGD": 2, "THB": 2, "TND": 3, "TRY": 2,
    "TWD": 2, "UAH": 2, "USD": 2, "VND": 0, "ZAR": 2,
}  # fmt: skip

_DECIMAL_RE = re.compile(r"([0-9]{1,20})(?:\.([0-9]{1,6}))?\Z", re.ASCII)


def check_currency(code: object) -> str:
    if not isinstance(code, str) or code not in CURRENCY_EXPONENTS:
        shown = code if isinstance(code, str) and len(code) <= 8 else "<invalid>"
        raise UnknownCurrency(f"unknown currency {shown!r}")
    return code


def exponent(currency: str) -> int:
    return CURRENCY_EXPONENTS[check_currency(currency)]


def check_amount_minor(amount_minor: object) -> int:
    """A transfer amount: a positive int within bounds (bool is not an amount)."""
    if type(amount_minor) is not int:
        raise InvalidAmount(f"amount must be an integer of minor units, got {amount_minor!r:.40}")
    if not 0 < amount_minor <= AMOUNT_MINOR_MAX:
        raise InvalidAmount(f"amount {amount_minor} is outside 1..{AMOUNT_MINOR_MAX} minor units")
    return amount_minor


def check_limit_minor(limit_minor: object) -> int:
    """A credit limit: how far below zero a balance may go; 0 means prepaid only."""
    if type(limit_minor) is not int:
        raise InvalidAmount(
            f"credit limit must be an integer of minor units, got {limit_minor!r:.40}"
        )
    if not 0 <= limit_minor <= BALANCE_MINOR_MAX:
        raise InvalidAmount(f"credit limit {limit_minor} is outside 0..{BALANCE_MINOR_MAX}")
    return limit_minor


def parse_amount(text: str, currency: str, *, allow_zero: bool = False) -> int:
    """``"12.34"`` in USD -> 1234. Exact: refuses what it would have to round."""
    exp = exponent(currency)
    match = _DECIMAL_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidAmount(f"{text!r:.40} is not a plain decimal amount like 12.34")
    whole, frac = match.group(1), match.group(2) or ""
    if len(frac) > exp:
        raise InvalidAmount(
            f"{text!r} has {len(frac)} decimals but {currency} has {exp}: refusing to round"
        )
    minor = int(whole) * 10**exp + (int(frac.ljust(exp, "0")) if exp else 0)
    if allow_zero and minor == 0:
        return 0
    return check_amount_minor(minor)


def format_amount(amount_minor: int, currency: str) -> str:
    """1234 in USD -> ``"12.34"``; -5 -> ``"-0.05"``."""
    exp = exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 10**exp)
    return f"{sign}{whole}.{frac:0{exp}d}" if exp else f"{sign}{whole}"


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        check_currency(self.currency)
        if type(self.amount_minor) is not int or abs(self.amount_minor) > BALANCE_MINOR_MAX:
            raise InvalidAmount(f"money amount {self.amount_minor!r:.40} out of bounds")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise InvalidAmount(f"cannot combine {self.currency} with {other.currency}")

    def __str__(self) -> str:
        return f"{format_amount(self.amount_minor, self.currency)} {self.currency}"
