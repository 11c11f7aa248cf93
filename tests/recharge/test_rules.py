"""The pure recharge rules: how much one recharge charges, and when a decline suspends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.domain.recharge import (
    FUNDING_DECLINE_REASONS,
    RechargeRule,
    SkipReason,
    after_decline,
    plan_recharge,
)
from tally.errors import InvalidAmount, UsageError

RULE = RechargeRule("acme", "card_1", 500, 3000, 3, target_minor=2000)


def test_a_target_rule_tops_up_to_the_target_and_a_fixed_rule_charges_its_amount() -> None:
    assert plan_recharge(RULE, True, 300, 0).amount_minor == 1700
    fixed = RechargeRule("acme", "card_1", 500, 3000, 3, fixed_minor=1000)
    assert plan_recharge(fixed, True, 300, 0).amount_minor == 1000


def test_the_daily_cap_shrinks_the_charge_and_then_makes_the_recharge_wait() -> None:
    assert plan_recharge(RULE, True, 300, 2000).amount_minor == 1000
    assert plan_recharge(RULE, True, 300, 3000).wait == "daily_cap_reached"


def test_no_rule_autopay_off_or_a_recovered_balance_skip_the_recharge() -> None:
    assert plan_recharge(None, True, 0, 0).skip is SkipReason.no_rule
    assert plan_recharge(RULE, False, 0, 0).skip is SkipReason.autopay_disabled
    assert plan_recharge(RULE, True, 500, 0).skip is SkipReason.balance_recovered


def test_a_rule_needs_exactly_one_of_target_and_fixed_and_a_target_above_the_threshold() -> None:
    with pytest.raises(UsageError):
        RechargeRule("acme", "card_1", 500, 3000, 3)
    with pytest.raises(UsageError):
        RechargeRule("acme", "card_1", 500, 3000, 3, target_minor=900, fixed_minor=100)
    with pytest.raises(InvalidAmount):
        RechargeRule("acme", "card_1", 500, 3000, 3, target_minor=500)


def test_only_a_funding_decline_after_the_grace_with_a_low_balance_suspends() -> None:
    assert not after_decline(RULE, 0, "card_declined", 100).suspend  # grace: 1 of 3
    last = after_decline(RULE, 2, "card_declined", 100)
    assert last.disable_autopay and last.suspend
    assert not after_decline(RULE, 2, "velocity_limit", 100).suspend  # the issuer throttling
    assert not after_decline(RULE, 2, "card_declined", None).suspend  # balance unreadable
    assert not after_decline(RULE, 2, "card_declined", 600).suspend  # still funded


@given(
    balance=st.integers(-(10**6), 10**6),
    spent=st.integers(0, 10**6),
    declines=st.integers(0, 10),
    reason=st.sampled_from(
        ["card_declined", "insufficient_funds", "expired_card", "velocity_limit", "other"]
    ),
)
def test_a_plan_never_exceeds_the_cap_and_a_suspension_always_has_a_funding_reason(
    balance: int, spent: int, declines: int, reason: str
) -> None:
    plan = plan_recharge(RULE, True, balance, spent)
    if plan.amount_minor:
        assert 0 < plan.amount_minor <= RULE.daily_cap_minor - spent
        assert balance < RULE.threshold_minor
    decision = after_decline(RULE, declines, reason, balance)
    if decision.suspend:
        assert reason in FUNDING_DECLINE_REASONS and decision.disable_autopay
