"""The payment gateway port: charge, lookup and refund a card, each with an idempotency key.

Every call ends in one of three outcomes:

- ``succeeded``: the money moved; ``charge_id`` / ``refund_id`` names it at the gateway.
- ``declined``: the gateway answered that it did NOT move the money, with a ``reason``. Only a
  charge declined for a funding reason may ever lead to a suspension (DESIGN invariant 7).
- ``unknown``: no trustworthy answer (timeout, lost response, connection refused, 5xx). The money
  may or may not have moved. The caller resolves it with ``lookup`` (or a replay) under the SAME
  key, never with a fresh key: that is how a card is never charged twice (invariant 5).

Reusing a key with other parameters raises ``IdempotencyConflict`` (a bug in the caller).
Infrastructure trouble surfaces as ``unknown`` from ``charge``/``refund`` and as
``GatewayUnavailable`` from ``lookup``, never as ``declined``. Invalid arguments (amount, ids,
currency, metadata) raise tally's ``UsageError`` subclasses before anything is sent.

A provider adapter (the simulator's ``HttpGateway``, the in-memory ``FakeGateway``, later Stripe)
is one class with these three methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from tally.domain.invariant import invariant


class OutcomeStatus(StrEnum):
    succeeded = "succeeded"
    declined = "declined"
    unknown = "unknown"


class DeclineReason(StrEnum):
    """Why the gateway refused. The first group applies to charges, the second to refunds."""

    card_declined = "card_declined"  # issuer said no, no reason given
    insufficient_funds = "insufficient_funds"
    velocity_limit = "velocity_limit"  # too many charges on the card in a short window
    expired_card = "expired_card"
    other = "other"  # a provider code this enum does not know (the raw code is in ``detail``)
    charge_not_found = "charge_not_found"
    charge_not_refundable = "charge_not_refundable"  # the charge did not succeed
    amount_exceeds_refundable = "amount_exceeds_refundable"

    @classmethod
    def parse(cls, code: str) -> DeclineReason:
        try:
            return cls(code)
        except ValueError:
            return cls.other


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    status: OutcomeStatus
    idempotency_key: str
    charge_id: str | None = None
    reason: DeclineReason | None = None
    #: Human-readable detail: why the outcome is unknown, or the provider's decline message.
    detail: str = ""
    #: The gateway answered from its record of an earlier request with this key (always true
    #: for ``lookup``).
    replayed: bool = False

    def __post_init__(self) -> None:
        _check_shape(self.status, self.charge_id, self.reason, "charge")

    @property
    def is_final(self) -> bool:
        return self.status is not OutcomeStatus.unknown


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    status: OutcomeStatus
    idempotency_key: str
    refund_id: str | None = None
    charge_id: str | None = None
    reason: DeclineReason | None = None
    detail: str = ""
    replayed: bool = False

    def __post_init__(self) -> None:
        _check_shape(self.status, self.refund_id, self.reason, "refund")

    @property
    def is_final(self) -> bool:
        return self.status is not OutcomeStatus.unknown


def _check_shape(
    status: OutcomeStatus, object_id: str | None, reason: DeclineReason | None, what: str
) -> None:
    invariant(
        (status is OutcomeStatus.succeeded) == (object_id is not None),
        f"a {what} outcome has an id exactly when it succeeded ({status.value}, {object_id!r})",
    )
    invariant(
        (status is OutcomeStatus.declined) == (reason is not None),
        f"a {what} outcome has a reason exactly when it was declined ({status.value}, {reason!r})",
    )


@runtime_checkable
class Gateway(Protocol):
    def charge(
        self,
        idempotency_key: str,
        card_id: str,
        amount_minor: int,
        currency: str,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> ChargeOutcome:
        """Charge the card once per key. Never raises for infrastructure trouble: ``unknown``."""
        ...

    def lookup(self, idempotency_key: str) -> ChargeOutcome | None:
        """The charge made under this key (final outcome), or None when the gateway has none.

        None is definite only once no request with this key can still be in flight; a charge
        retried with the same key is safe either way. Raises ``GatewayUnavailable``."""
        ...

    def refund(self, idempotency_key: str, charge_id: str, amount_minor: int) -> RefundOutcome:
        """Refund part or all of a charge once per key; ``unknown`` on infrastructure trouble."""
        ...
