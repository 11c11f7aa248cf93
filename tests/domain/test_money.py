from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.domain.limits import AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX
from tally.domain.money import CURRENCY_EXPONENTS, Money, format_amount, parse_amount
from tally.errors import InvalidAmount, UnknownCurrency

currencies = st.sampled_from(sorted(CURRENCY_EXPONENTS))


@given(currency=currencies, minor=st.integers(min_value=1, max_value=AMOUNT_MINOR_MAX))
def test_formatting_then_parsing_gives_back_the_same_minor_units(currency: str, minor: int) -> None:
    assert parse_amount(format_amount(minor, currency), currency) == minor


@given(
    currency=currencies,
    amounts=st.lists(st.integers(min_value=-(10**12), max_value=10**12), min_size=1, max_size=30),
)
def test_money_sums_are_exact_and_order_free(currency: str, amounts: list[int]) -> None:
    total = Money(0, currency)
    for a in amounts:
        total = total + Money(a, currency)
    back = Money(0, currency)
    for a in reversed(amounts):
        back = back + Money(a, currency)
    assert total == back == Money(sum(amounts), currency)


@pytest.mark.parametrize(
    "text", ["12.345", "-1", "1e3", "1,00", " ", "", "0x10", "１２", "12.", ".5", "NaN"]
)
def test_amounts_that_would_need_rounding_or_guessing_are_refused(text: str) -> None:
    with pytest.raises(InvalidAmount):
        parse_amount(text, "USD")


def test_zero_decimal_currencies_refuse_any_decimals() -> None:
    assert parse_amount("500", "JPY") == 500
    with pytest.raises(InvalidAmount):
        parse_amount("500.0", "JPY")


def test_three_decimal_currencies_keep_all_three() -> None:
    assert parse_amount("1.234", "KWD") == 1234
    assert format_amount(-5, "KWD") == "-0.005"


def test_unknown_currencies_and_bools_are_refused() -> None:
    with pytest.raises(UnknownCurrency):
        parse_amount("1", "XXX")
    with pytest.raises(InvalidAmount):
        Money(True, "USD")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        Money(BALANCE_MINOR_MAX + 1, "USD")


def test_money_of_two_currencies_does_not_add() -> None:
    with pytest.raises(InvalidAmount):
        Money(1, "USD") + Money(1, "EUR")
