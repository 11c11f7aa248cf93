"""Gateway errors, placed in the tree of ``tally.errors``:

    TallyError
    ├── UsageError
    │   ├── IdempotencyConflict      a key was reused with other parameters (HTTP 409): a caller bug
    │   └── GatewayRequestRejected   the gateway refused the request as malformed (HTTP 4xx)
    └── InfrastructureError
        └── GatewayError             the payment gateway
            ├── GatewayUnavailable   no answer (connect failed, timeout, 5xx, outage)
            └── GatewayProtocolError an answer tally cannot read

``charge`` and ``refund`` never raise ``GatewayError``: they return an ``unknown`` outcome, because
the caller's next step (resolve by key) is the same whatever broke. ``lookup`` raises them.
"""

from __future__ import annotations

from tally.errors import InfrastructureError, UsageError


class IdempotencyConflict(UsageError):
    hint = (
        "an idempotency key names one request forever: use a new key for a new charge, "
        "or repeat the original parameters to learn the first outcome"
    )

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        #: The parameters that differ from the first request with this key.
        self.fields = fields


class GatewayRequestRejected(UsageError):
    hint = "the request was malformed; nothing was charged"


class GatewayError(InfrastructureError):
    hint = "the payment gateway is unhealthy; resolve open charges by lookup with the same key"


class GatewayUnavailable(GatewayError):
    pass


class GatewayProtocolError(GatewayError):
    hint = "the gateway answered something tally cannot read; check the gateway version"
