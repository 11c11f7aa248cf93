"""The simulated bank: the one place that decides a charge or refund, shared by the simulator
server and the fake, so both have the same semantics by construction.

Idempotency (Stripe semantics): the first request with a key is processed and recorded, whatever
its outcome; the same key with the same parameters returns that record again (``replayed``); the
same key with other parameters raises ``IdempotencyConflict``. Keys are one namespace for charges
and refunds. Transport faults (latency, lost responses, outage) are the caller's business: the
bank only records which first responses are to be lost (``Record.response_fault``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tally.domain.ids import check_id
from tally.domain.money import check_amount_minor, check_currency
from tally.errors import UsageError
from tally.gateway.errors import IdempotencyConflict
from tally.gateway.faults import Faults, charge_decline, response_fault
from tally.gateway.port import DeclineReason
from tally.gateway.records import Record, RecordStore

METADATA_KEYS_MAX = 20
METADATA_KEY_LEN_MAX = 40
METADATA_VALUE_LEN_MAX = 500


class InvalidMetadata(UsageError):
    hint = (
        f"metadata is at most {METADATA_KEYS_MAX} string keys of up to {METADATA_KEY_LEN_MAX} "
        f"characters with string values of up to {METADATA_VALUE_LEN_MAX}"
    )


def check_metadata(metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or len(metadata) > METADATA_KEYS_MAX:
        raise InvalidMetadata("metadata must be an object with few keys")
    for key, value in metadata.items():
        if not isinstance(key, str) or not 0 < len(key) <= METADATA_KEY_LEN_MAX:
            raise InvalidMetadata(f"metadata key {key!r:.50} is not a short string")
        if not isinstance(value, str) or len(value) > METADATA_VALUE_LEN_MAX:
            raise InvalidMetadata(f"metadata value of {key!r} is not a short string")
    return dict(metadata)


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    idempotency_key: str
    card: str
    amount_minor: int
    currency: str
    metadata: Mapping[str, str]

    def __post_init__(self) -> None:
        check_id(self.idempotency_key, "idempotency key")
        check_id(self.card, "card id")
        check_amount_minor(self.amount_minor)
        check_currency(self.currency)
        object.__setattr__(self, "metadata", check_metadata(self.metadata))


@dataclass(frozen=True, slots=True)
class RefundRequest:
    idempotency_key: str
    charge_id: str
    amount_minor: int

    def __post_init__(self) -> None:
        check_id(self.idempotency_key, "idempotency key")
        check_id(self.charge_id, "charge id")
        check_amount_minor(self.amount_minor)


@dataclass(frozen=True, slots=True)
class Processed:
    record: Record
    replayed: bool

    @property
    def lose_response(self) -> str | None:
        """How to lose this response: only a first-time answer is ever lost."""
        return None if self.replayed else self.record.response_fault


class Bank:
    def __init__(
        self,
        store: RecordStore,
        faults: Faults | None = None,
        *,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.faults = faults or Faults()
        self._clock_s = clock_s
        # Check-then-insert of a key must be atomic; the fake may be called from many threads.
        self._lock = threading.Lock()

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults

    def now_ms(self) -> int:
        return int(self._clock_s() * 1000)

    def charge(self, req: ChargeRequest) -> Processed:
        with self._lock:
            first = self.store.by_key(req.idempotency_key)
            if first is not None:
                _check_replay(first, _charge_params(req), req.idempotency_key)
                return Processed(first, replayed=True)
            return Processed(self.store.insert(self._decide_charge(req)), replayed=False)

    def refund(self, req: RefundRequest) -> Processed:
        with self._lock:
            first = self.store.by_key(req.idempotency_key)
            if first is not None:
                _check_replay(first, _refund_params(req), req.idempotency_key)
                return Processed(first, replayed=True)
            return Processed(self.store.insert(self._decide_refund(req)), replayed=False)

    def lookup(self, idempotency_key: str) -> Record | None:
        check_id(idempotency_key, "idempotency key")
        record = self.store.by_key(idempotency_key)
        return record if record is not None and record.kind == "charge" else None

    def _decide_charge(self, req: ChargeRequest) -> Record:
        now_ms = self.now_ms()
        since_ms = now_ms - self.faults.velocity_window_s * 1000
        recent = self.store.count_succeeded_charges(req.card, since_ms)
        reason = charge_decline(self.faults, req.card, req.idempotency_key, recent)
        return Record(
            seq=0, kind="charge", id="", idempotency_key=req.idempotency_key, card=req.card,
            amount_minor=req.amount_minor, currency=req.currency, metadata=dict(req.metadata),
            status="declined" if reason else "succeeded", reason=reason.value if reason else None,
            response_fault=response_fault(self.faults, req.idempotency_key), created_ms=now_ms,
        )  # fmt: skip

    def _decide_refund(self, req: RefundRequest) -> Record:
        charge = self.store.by_id(req.charge_id)
        reason: DeclineReason | None = None
        if charge is None or charge.kind != "charge":
            reason, charge = DeclineReason.charge_not_found, None
        elif charge.status != "succeeded":
            reason = DeclineReason.charge_not_refundable
        elif self.store.refunded_minor(charge.id) + req.amount_minor > charge.amount_minor:
            reason = DeclineReason.amount_exceeds_refundable
        return Record(
            seq=0, kind="refund", id="", idempotency_key=req.idempotency_key,
            card=charge.card if charge else None, amount_minor=req.amount_minor,
            currency=charge.currency if charge else None, charge_id=req.charge_id,
            status="declined" if reason else "succeeded", reason=reason.value if reason else None,
            response_fault=response_fault(self.faults, req.idempotency_key),
            created_ms=self.now_ms(),
        )  # fmt: skip


def _charge_params(req: ChargeRequest) -> dict[str, object]:
    return {
        "kind": "charge", "card": req.card, "amount_minor": req.amount_minor,
        "currency": req.currency, "metadata": dict(req.metadata),
    }  # fmt: skip


def _refund_params(req: RefundRequest) -> dict[str, object]:
    return {"kind": "refund", "charge_id": req.charge_id, "amount_minor": req.amount_minor}


def _check_replay(first: Record, params: dict[str, object], key: str) -> None:
    differing = tuple(name for name, value in params.items() if getattr(first, name) != value)
    if differing:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was first used for a {first.kind} ({first.id}) with other "
            f"{', '.join(differing)}",
            fields=differing,
        )
