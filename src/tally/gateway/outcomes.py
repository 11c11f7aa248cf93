"""Turning the bank's records into port outcomes (shared by the fake and the HTTP adapter)."""

from __future__ import annotations

from tally.gateway.port import ChargeOutcome, DeclineReason, OutcomeStatus, RefundOutcome
from tally.gateway.records import Record


def charge_outcome(record: Record, *, replayed: bool) -> ChargeOutcome:
    if record.status == "succeeded":
        return ChargeOutcome(
            OutcomeStatus.succeeded, record.idempotency_key, charge_id=record.id, replayed=replayed
        )
    return ChargeOutcome(
        OutcomeStatus.declined,
        record.idempotency_key,
        reason=DeclineReason.parse(record.reason or ""),
        detail=record.reason or "",
        replayed=replayed,
    )


def refund_outcome(record: Record, *, replayed: bool) -> RefundOutcome:
    if record.status == "succeeded":
        return RefundOutcome(
            OutcomeStatus.succeeded,
            record.idempotency_key,
            refund_id=record.id,
            charge_id=record.charge_id,
            replayed=replayed,
        )
    return RefundOutcome(
        OutcomeStatus.declined,
        record.idempotency_key,
        charge_id=record.charge_id,
        reason=DeclineReason.parse(record.reason or ""),
        detail=record.reason or "",
        replayed=replayed,
    )
