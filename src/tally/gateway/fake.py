"""An in-memory gateway with the simulator's semantics and fault knobs, for unit tests.

It runs the same ``Bank`` as the simulator on an in-memory record store, so idempotency, declines,
the velocity rule and refunds behave identically. Transport faults are mimicked: ``outage`` gives
``unknown`` without processing (lookup raises ``GatewayUnavailable``), ``timeout_after_commit``
commits and then gives ``unknown``, ``latency_ms`` sleeps through the injected ``sleep_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from tally.gateway.bank import Bank, ChargeRequest, Processed, RefundRequest
from tally.gateway.errors import GatewayUnavailable
from tally.gateway.faults import Faults
from tally.gateway.outcomes import charge_outcome, refund_outcome
from tally.gateway.port import ChargeOutcome, OutcomeStatus, RefundOutcome
from tally.gateway.records import Record, RecordStore


class FakeGateway:
    def __init__(
        self,
        faults: Faults | None = None,
        *,
        clock_s: Callable[[], float] = time.time,
        sleep_s: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bank = Bank(RecordStore(":memory:"), faults, clock_s=clock_s)
        self._sleep_s = sleep_s

    # -- controls (the simulator's admin API, in-process) -------------------------------------
    @property
    def faults(self) -> Faults:
        return self.bank.faults

    def set_faults(self, **patch: Any) -> Faults:
        self.bank.set_faults(self.bank.faults.merged(patch))
        return self.bank.faults

    def records(self) -> list[Record]:
        return list(self.bank.store.iter_all())

    def close(self) -> None:
        self.bank.store.close()

    # -- the port ----------------------------------------------------------------------------
    def charge(
        self,
        idempotency_key: str,
        card_id: str,
        amount_minor: int,
        currency: str,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> ChargeOutcome:
        req = ChargeRequest(idempotency_key, card_id, amount_minor, currency, metadata or {})
        if not self._before_processing():
            return ChargeOutcome(OutcomeStatus.unknown, idempotency_key, detail="outage: 503")
        done = self.bank.charge(req)
        if _lost(done):
            return ChargeOutcome(OutcomeStatus.unknown, idempotency_key, detail=_lost_detail(done))
        return charge_outcome(done.record, replayed=done.replayed)

    def lookup(self, idempotency_key: str) -> ChargeOutcome | None:
        if self.faults.outage:
            raise GatewayUnavailable("payment gateway outage (fake): 503")
        record = self.bank.lookup(idempotency_key)
        return charge_outcome(record, replayed=True) if record is not None else None

    def refund(self, idempotency_key: str, charge_id: str, amount_minor: int) -> RefundOutcome:
        req = RefundRequest(idempotency_key, charge_id, amount_minor)
        if not self._before_processing():
            return RefundOutcome(OutcomeStatus.unknown, idempotency_key, detail="outage: 503")
        done = self.bank.refund(req)
        if _lost(done):
            return RefundOutcome(OutcomeStatus.unknown, idempotency_key, detail=_lost_detail(done))
        return refund_outcome(done.record, replayed=done.replayed)

    def _before_processing(self) -> bool:
        """Apply latency; False when an outage refuses the request unprocessed."""
        if self.faults.outage:
            return False
        if self.faults.latency_ms:
            self._sleep_s(self.faults.latency_ms / 1000)
        return True


def _lost(done: Processed) -> bool:
    return done.lose_response is not None


def _lost_detail(done: Processed) -> str:
    return f"response lost after commit ({done.lose_response}): resolve by lookup"
