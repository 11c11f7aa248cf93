"""Auto-recharge rules, pure: the rule an account sets, how much one recharge charges, and the
suspension policy. No I/O; the saga in ``tally.billing.recharge`` applies these decisions.

A recharge moves through phases; each phase is one local SQL transaction (a recovery point):

    opened ──► intent ──► (gateway charge) ──► charged ──► credited ──► succeeded
       │          │                 │
       │          └── unknown ──► charge_unknown ──(lookup, same key)──► charged | declined
       └──► skipped (no rule / autopay off / balance recovered)         declined

A phase names what is durable; a recharge is *finished* once its Redis marker is closed too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tally.domain.ids import check_id
from tally.domain.limits import AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX
from tally.errors import InvalidAmount, UsageError

#: Declines that mean the customer's card cannot fund the account. A velocity decline is the
#: issuer throttling repeated charges (2013: tally's own fault), an unknown outcome is no answer
#: at all: neither may ever lead to a suspension (DESIGN invariant 7).
FUNDING_DECLINE_REASONS = frozenset({"card_declined", "insufficient_funds", "expired_card"})
DECLINES_MAX_MAX = 100
DAY_MS = 24 * 3600 * 1000


class RechargePhase(StrEnum):
    opened = "opened"  # a debit crossed the threshold (Redis marker set); nothing charged
    intent = "intent"  # amount and card fixed, durable: the gateway may now be called
    charge_unknown = "charge_unknown"  # the gateway gave no answer: resolve by lookup, same key
    charged = "charged"  # the gateway charged the card (charge_id known)
    credited = "credited"  # the credit is in the ledger (applied to Redis idempotently)
    succeeded = "succeeded"
    declined = "declined"
    skipped = "skipped"

    @property
    def is_outcome(self) -> bool:
        """The saga has its outcome; only closing the Redis marker may remain."""
        return self in (RechargePhase.succeeded, RechargePhase.declined, RechargePhase.skipped)

    @property
    def may_have_charged(self) -> bool:
        """Counts towards the daily cap: the card may carry this charge."""
        return self in (
            RechargePhase.charge_unknown,
            RechargePhase.charged,
            RechargePhase.credited,
            RechargePhase.succeeded,
        )


@dataclass(frozen=True, slots=True)
class RechargeRule:
    """``target_minor``: top the balance up to this; or ``fixed_minor``: charge this each time."""

    account_id: str
    card_id: str
    threshold_minor: int
    daily_cap_minor: int
    declines_max: int = 3
    target_minor: int | None = None
    fixed_minor: int | None = None

    def __post_init__(self) -> None:
        check_id(self.account_id, "account id")
        check_id(self.card_id, "card id")
        if (self.target_minor is None) == (self.fixed_minor is None):
            raise UsageError("a recharge rule has either a target balance or a fixed amount")
        _bounded(self.threshold_minor, "threshold", -BALANCE_MINOR_MAX, BALANCE_MINOR_MAX)
        _bounded(self.daily_cap_minor, "daily cap", 1, BALANCE_MINOR_MAX)
        if type(self.declines_max) is not int or not 1 <= self.declines_max <= DECLINES_MAX_MAX:
            raise UsageError(f"declines_max must be 1..{DECLINES_MAX_MAX}")
        if self.target_minor is not None:
            _bounded(self.target_minor, "target", -BALANCE_MINOR_MAX, BALANCE_MINOR_MAX)
            if self.target_minor <= self.threshold_minor:
                raise InvalidAmount("the target balance must be above the threshold")
        if self.fixed_minor is not None:
            _bounded(self.fixed_minor, "fixed amount", 1, AMOUNT_MINOR_MAX)

    def wanted_minor(self, balance_minor: int) -> int:
        """What this rule would charge for a balance (0: nothing is missing)."""
        if self.fixed_minor is not None:
            return self.fixed_minor
        assert self.target_minor is not None
        return max(0, self.target_minor - balance_minor)


def _bounded(value: object, what: str, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise InvalidAmount(f"{what} {value!r:.40} is outside {low}..{high} minor units")


class SkipReason(StrEnum):
    no_rule = "no_rule"
    autopay_disabled = "autopay_disabled"
    balance_recovered = "balance_recovered"  # at or above the threshold again: no shortfall


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with an opened recharge: charge ``amount_minor``, skip it, or wait (the daily
    cap has no room yet: the recharge stays open so no second one opens meanwhile)."""

    amount_minor: int = 0
    skip: SkipReason | None = None
    wait: str | None = None


def plan_recharge(
    rule: RechargeRule | None, autopay_enabled: bool, balance_minor: int, spent_today_minor: int
) -> Plan:
    if rule is None:
        return Plan(skip=SkipReason.no_rule)
    if not autopay_enabled:
        return Plan(skip=SkipReason.autopay_disabled)
    if balance_minor >= rule.threshold_minor:
        return Plan(skip=SkipReason.balance_recovered)
    wanted = min(rule.wanted_minor(balance_minor), AMOUNT_MINOR_MAX)
    room = rule.daily_cap_minor - spent_today_minor
    if wanted <= 0:
        return Plan(skip=SkipReason.balance_recovered)
    if room <= 0:
        return Plan(wait="daily_cap_reached")
    return Plan(amount_minor=min(wanted, room))


@dataclass(frozen=True, slots=True)
class DeclineDecision:
    consecutive_declines: int
    disable_autopay: bool
    suspend: bool


def after_decline(
    rule: RechargeRule, consecutive_declines: int, reason: str, balance_minor: int | None
) -> DeclineDecision:
    """The grace rule: every decline counts towards disabling autopay after ``declines_max`` in a
    row; a suspension needs a FUNDING decline, autopay exhausted, and a balance still below the
    threshold (``None``: the balance could not be read, so no suspension)."""
    count = consecutive_declines + 1
    disable = count >= rule.declines_max
    suspend = (
        disable
        and reason in FUNDING_DECLINE_REASONS
        and balance_minor is not None
        and balance_minor < rule.threshold_minor
    )
    return DeclineDecision(count, disable, suspend)
