"""The payment gateway: the port (charge / lookup / refund with idempotency keys), its adapters
(``HttpGateway`` for the simulator, ``FakeGateway`` in memory) and the simulator itself
(``tally.gateway.server``, started from Python with ``SimulatorProcess``)."""

from tally.gateway.errors import (
    GatewayError,
    GatewayProtocolError,
    GatewayRequestRejected,
    GatewayUnavailable,
    IdempotencyConflict,
)
from tally.gateway.fake import FakeGateway
from tally.gateway.faults import Faults, InvalidFaults
from tally.gateway.port import ChargeOutcome, DeclineReason, Gateway, OutcomeStatus, RefundOutcome
from tally.gateway.records import Record

__all__ = [
    "ChargeOutcome",
    "DeclineReason",
    "FakeGateway",
    "Faults",
    "Gateway",
    "GatewayError",
    "GatewayProtocolError",
    "GatewayRequestRejected",
    "GatewayUnavailable",
    "IdempotencyConflict",
    "InvalidFaults",
    "OutcomeStatus",
    "Record",
    "RefundOutcome",
]
