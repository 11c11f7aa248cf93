"""Request and response bodies. Strict: no coercion (``"5"`` or ``5.0`` is not an amount, ``true``
is not a number), no unknown fields, ASCII ids of bounded length. The domain checks again; these
exist so malformed input is refused with a precise problem before anything runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
)

from tally.domain.holds import HOLD_EXPIRES_S_MAX
from tally.domain.limits import AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX, ID_LEN_MAX, OCCURRED_AT_MS_MAX
from tally.domain.money import CURRENCY_EXPONENTS
from tally.domain.transfers import parse_occurred_at
from tally.errors import UsageError

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"
BATCH_ITEMS_MAX = 1000

Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_LEN_MAX, pattern=ID_PATTERN)]
AmountMinor = Annotated[StrictInt, Field(gt=0, le=AMOUNT_MINOR_MAX)]
LimitMinor = Annotated[StrictInt, Field(ge=0, le=BALANCE_MINOR_MAX)]
if TYPE_CHECKING:
    Currency = str
else:
    Currency = Literal[tuple(sorted(CURRENCY_EXPONENTS))]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- accounts --------------------------------------------------------------------------------
class AccountCreate(Strict):
    id: Id
    currency: Currency
    credit_limit_minor: LimitMinor = 0


class AccountUpdate(Strict):
    credit_limit_minor: LimitMinor | None = None
    status: Literal["active", "suspended"] | None = None


class AccountOut(BaseModel):
    id: str
    currency: str
    status: str
    credit_limit_minor: int
    balance_minor: int
    balance: str = Field(description="the balance as a decimal in the account's currency")
    held_minor: int = Field(0, description="the sum of the account's open holds")
    available_minor: int = Field(
        0,
        description="what debits and new holds may use: balance - open holds + credit limit",
    )
    #: Filled by extensions (e.g. the recharge rule and state) once they are installed.
    extensions: dict[str, Any] = Field(default_factory=dict)


class AccountsPage(BaseModel):
    items: list[AccountOut | dict[str, Any]]
    next_cursor: str | None


# -- transfers -------------------------------------------------------------------------------
OCCURRED_AT_DESCRIPTION = (
    "when the usage happened: epoch milliseconds or an RFC 3339 time with an offset. Absent: "
    "now, by the store's clock. Send the same value on every retry: a retry later than the "
    "idempotency window after the first attempt is exact only with it (README). Refused with "
    "occurred_outside_window when older than the window allows, occurred_in_future when ahead"
)


OccurredAtMs = Annotated[StrictInt, Field(ge=0, le=OCCURRED_AT_MS_MAX)]


def occurred_at_ms(value: int | str) -> int:
    try:
        return parse_occurred_at(value)
    except UsageError as exc:  # pydantic turns a ValueError into a 400 invalid_request
        raise ValueError(str(exc)) from None


class DebitIn(Strict):
    transfer_id: Id = Field(description="unique forever; a replay returns the first outcome")
    account_id: Id
    amount_minor: AmountMinor
    currency: Currency | None = Field(None, description="checked against the account's if given")
    occurred_at: OccurredAtMs | Annotated[str, StringConstraints(max_length=40)] | None = Field(
        None, description=OCCURRED_AT_DESCRIPTION
    )

    @field_validator("occurred_at")
    @classmethod
    def _occurred_at(cls, value: int | str | None) -> int | None:
        return None if value is None else occurred_at_ms(value)

    @property
    def occurred_at_ms(self) -> int | None:
        """Epoch ms after validation (the validator converts an RFC 3339 time)."""
        value = self.occurred_at
        return value if value is None or isinstance(value, int) else occurred_at_ms(value)


class CreditIn(Strict):
    transfer_id: Id
    account_id: Id
    amount_minor: AmountMinor
    currency: Currency
    source: Literal["adjustments", "card_clearing"] = "adjustments"


class BatchIn(Strict):
    debits: Annotated[list[DebitIn], Field(min_length=1, max_length=BATCH_ITEMS_MAX)]


class TransferOut(BaseModel):
    transfer_id: str
    kind: Literal["debit", "credit"]
    account_id: str
    amount_minor: int
    currency: str | None
    status: Literal["ok", "refused", "pending", "unknown"] = Field(
        description="unknown (batch items only): the store failed before this item was decided "
        "(result outcome_unknown: it may have applied; store_unavailable: it was not); "
        "retry it with the same transfer_id"
    )
    result: str = Field(description="the result code's name, e.g. ok, insufficient_funds")
    result_code: int | None
    balance_minor: int | None = Field(description="the balance right after the first application")


class BatchOut(BaseModel):
    """One result per debit, in order. When the store failed for part of a batch only (a Redis
    Cluster shard lost or unreachable, the others answering), the decided items carry their
    outcomes, the items of a lost shard are refused ``store_lost`` (nothing written), and the
    others are ``unknown``; when it failed for all of it, the answer is the 503 problem."""

    results: list[TransferOut]
    ok: int
    refused: int
    unknown: int = 0


class TransferRecordOut(BaseModel):
    id: str
    kind: str
    account_id: str
    debit_account_id: str
    credit_account_id: str
    amount_minor: int
    currency: str
    result: str
    result_code: int
    balance_after_minor: int | None
    ts_ms: int
    epoch_id: str


class TransfersPageOut(BaseModel):
    items: list[TransferRecordOut]
    next_cursor: str | None = Field(
        description="pass as ?after= for the next page; null at the end"
    )


# -- auto-recharge ---------------------------------------------------------------------------
BalanceMinor = Annotated[StrictInt, Field(ge=-BALANCE_MINOR_MAX, le=BALANCE_MINOR_MAX)]
PositiveBalanceMinor = Annotated[StrictInt, Field(gt=0, le=BALANCE_MINOR_MAX)]


class RechargeRuleIn(Strict):
    card_id: Id
    threshold_minor: BalanceMinor = Field(description="recharge when the balance falls below")
    target_minor: BalanceMinor | None = Field(None, description="top the balance up to this ...")
    fixed_minor: AmountMinor | None = Field(None, description="... or charge this each time")
    daily_cap_minor: PositiveBalanceMinor = Field(description="most charged in 24 hours")
    declines_max: Annotated[StrictInt, Field(ge=1, le=100)] = 3


class RechargeRuleOut(BaseModel):
    account_id: str
    card_id: str
    threshold_minor: int
    target_minor: int | None
    fixed_minor: int | None
    daily_cap_minor: int
    declines_max: int
    autopay: bool
    consecutive_declines: int
    disabled_reason: str | None


class RechargeOut(BaseModel):
    id: str
    account_id: str
    phase: str = Field(description="opened, intent, charge_unknown, charged, credited, ...")
    finished: bool
    currency: str
    amount_minor: int | None
    card_id: str | None
    charge_id: str | None
    attempts: int
    balance_at_open_minor: int
    wait_reason: str | None = Field(description="why it waits (frozen, store health, circuit)")
    outcome_reason: str | None
    opened_at_ms: int
    updated_at_ms: int
    finished_at_ms: int | None


class RechargesPage(BaseModel):
    items: list[RechargeOut]
    next_cursor: str | None


class FreezeIn(Strict):
    on: StrictBool
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""


class FreezeOut(BaseModel):
    frozen: bool
    reason: str
    actor: str
    at_ms: int


class RemediateIn(Strict):
    apply: StrictBool = False
    refund_uncredited: StrictBool = False


# -- admin and health ------------------------------------------------------------------------
class RebuildIn(Strict):
    force: StrictBool = False
    #: one logical shard of a Redis Cluster (its own new epoch); omitted: the whole store
    shard: StrictInt | None = Field(default=None, ge=0, le=1023)


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    code: str
    detail: str
    model_config = ConfigDict(extra="allow")


class CheckOut(BaseModel):
    ok: bool
    detail: str
    values: dict[str, Any]


class ReadinessOut(BaseModel):
    ready: bool
    reason: str | None
    checks: dict[str, CheckOut]


# -- holds -----------------------------------------------------------------------------------
ExpiresInS = Annotated[StrictInt, Field(ge=1, le=HOLD_EXPIRES_S_MAX)]


class HoldCreate(Strict):
    hold_id: Id = Field(description="unique forever; a replay returns the first outcome")
    account_id: Id
    amount_minor: AmountMinor = Field(description="reserved from the available balance")
    expires_in_s: ExpiresInS = Field(
        description=f"seconds until the hold expires (1..{HOLD_EXPIRES_S_MAX}, 7 days) by the "
        "store's clock; an expired hold is released and can never be captured"
    )


class HoldCapture(Strict):
    amount_minor: AmountMinor = Field(
        description="at most the held amount; ONE capture per hold: the rest is released"
    )


class HoldOut(BaseModel):
    hold_id: str
    account_id: str
    status: Literal["open", "captured", "voided", "expired", "refused"]
    result: str = Field(description="the outcome's code name: ok, or why it was refused")
    result_code: int
    amount_minor: int = Field(description="the held amount")
    captured_minor: int | None
    expires_at_ms: int = Field(description="the expiry, ms since the epoch, store's clock")
    balance_minor: int | None = Field(description="the balance right after the first application")
    held_minor: int | None = Field(description="the account's held sum right after it")
    capture_transfer_id: str | None = Field(description="the debit the capture booked")
    recharge_id: str | None = Field(description="the auto-recharge the capture opened")


# -- events and webhooks -----------------------------------------------------------------------
class EventOut(BaseModel):
    id: str = Field(description="stable event id (evt_…): the webhook-id; dedupe on it")
    cursor: int = Field(description="position in the outbox: pass as ?after= to read on")
    type: str
    timestamp: str
    data: dict[str, Any]


class EventsPage(BaseModel):
    items: list[EventOut]
    next_cursor: int = Field(description="the last item's cursor (or ?after= when empty)")


class WebhookEndpointIn(Strict):
    url: str = Field(min_length=1, max_length=2048, description="http(s) URL receiving POSTs")
    event_types: list[str] | None = Field(
        default=None, description="only these event types (default: every type)"
    )
    secret: str | None = Field(
        default=None,
        max_length=100,
        description="whsec_ + base64 of 24..64 bytes; default: a new random secret",
    )


class WebhookEndpointOut(BaseModel):
    id: str
    url: str
    event_types: list[str] | None
    created_at_ms: int
    secret: str | None = Field(
        default=None, description="the signing secret: only in the answer to POST"
    )


class WebhookEndpointsPage(BaseModel):
    items: list[WebhookEndpointOut]


class WebhookDeliveryOut(BaseModel):
    id: int
    event_cursor: int
    state: str = Field(description="pending | delivered | dead (dead letter)")
    attempts: int
    next_attempt_at_ms: int
    last_status: int | None
    last_error: str | None


class WebhookDeliveriesPage(BaseModel):
    items: list[WebhookDeliveryOut]


class BalanceAlertIn(Strict):
    threshold_minor: Annotated[StrictInt, Field(ge=-BALANCE_MINOR_MAX, le=BALANCE_MINOR_MAX)]


class BalanceAlertOut(BaseModel):
    account_id: str
    threshold_minor: int
    below: bool
