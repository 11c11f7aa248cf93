"""Balance holds: place, capture, void, read (``domain.holds``). The hold id is the idempotency
key of all three writes: the same request again answers the first outcome, with the same status
and body (``Idempotent-Replayed: true`` says so); a place with other parameters is 409
``hold_id_conflict``. Refusals are problems naming a stable code; nothing is written for them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from tally.api.auth import service_key
from tally.api.problems import PROBLEM
from tally.api.routes.common import ctx, mark, problems
from tally.api.schemas import ID_PATTERN, HoldCapture, HoldCreate, HoldOut
from tally.domain.holds import HoldCode, HoldOutcome
from tally.domain.limits import ID_LEN_MAX

router = APIRouter(prefix="/v1/holds", tags=["holds"], dependencies=[Depends(service_key)])

HoldId = Annotated[
    str, Path(min_length=1, max_length=ID_LEN_MAX, pattern=ID_PATTERN, description="hold id")
]
REPLAYED = "Idempotent-Replayed"

#: The contract: each refusal's status (the codes are ``HoldCode`` names).
HOLD_STATUS: dict[HoldCode, int] = {
    HoldCode.insufficient_funds: 402,
    HoldCode.account_not_found: 404,
    HoldCode.hold_not_found: 404,
    HoldCode.account_not_active: 422,
    HoldCode.amount_invalid: 400,
    HoldCode.hold_id_conflict: 409,
    HoldCode.hold_expired: 409,
    HoldCode.hold_already_captured: 409,
    HoldCode.hold_voided: 409,
    HoldCode.capture_exceeds_hold: 422,
}


def hold_body(o: HoldOutcome) -> dict[str, Any]:
    return {
        "hold_id": o.hold_id,
        "account_id": o.account_id,
        "status": o.status.value if o.status is not None else None,
        "result": o.code.name,
        "result_code": int(o.code),
        "amount_minor": o.amount_minor,
        "captured_minor": o.captured_minor,
        "expires_at_ms": o.expires_at_ms,
        "balance_minor": o.balance_minor,
        "held_minor": o.held_minor,
        "capture_transfer_id": o.capture_id,
        "recharge_id": o.recharge_id,
    }


def respond(request: Request, o: HoldOutcome, ok_status: int) -> JSONResponse:
    mark(request, o.code.name)
    headers = {REPLAYED: "true"} if o.replayed else {}
    if o.code is HoldCode.ok:
        return JSONResponse(hold_body(o), status_code=ok_status, headers=headers)
    status = HOLD_STATUS[o.code]
    body = {k: v for k, v in hold_body(o).items() if v is not None and k != "status"}
    problem = {
        **body,
        "hold_status": o.status.value if o.status is not None else None,
        "type": f"https://tally.invalid/problems/{o.code.name}",
        "title": o.code.name.replace("_", " "),
        "status": status,
        "code": o.code.name,
        "detail": f"hold {o.hold_id} refused: {o.code.name}",
    }
    return JSONResponse(problem, status_code=status, media_type=PROBLEM, headers=headers)


def _responses(ok: int, *statuses: int) -> dict[int | str, dict[str, Any]]:
    return problems(*statuses) | {ok: {"model": HoldOut, "description": "done (or its replay)"}}


@router.post("", name="hold_place", status_code=201, responses=_responses(201, 402, 404, 409, 422))
def place(body: HoldCreate, request: Request) -> JSONResponse:
    """Reserve ``amount_minor`` of the account's available balance (balance - open holds +
    credit limit) for ``expires_in_s``: 201 placed, 402 not enough available, 404 no account,
    409 the hold id was placed with other parameters (``hold_id_conflict``), 422 account not
    active. A refused place is recorded too: its replay is the same refusal."""
    o = ctx(request).engine.place_hold(
        body.hold_id, body.account_id, body.amount_minor, body.expires_in_s * 1000
    )
    return respond(request, o, 201)


@router.post("/{hold_id}/capture", name="hold_capture", responses=_responses(200, 404, 409, 422))
def capture(hold_id: HoldId, body: HoldCapture, request: Request) -> JSONResponse:
    """SINGLE capture: ``amount_minor`` (at most the held amount) becomes a debit, the rest is
    released. The same capture again replays it; 409 ``hold_already_captured`` (another amount
    after a capture), ``hold_voided``, ``hold_expired`` (never captured after its expiry); 422
    ``capture_exceeds_hold``; 404 ``hold_not_found``."""
    o = ctx(request).engine.capture_hold(hold_id, body.amount_minor)
    return respond(request, o, 200)


@router.post("/{hold_id}/void", name="hold_void", responses=_responses(200, 404, 409))
def void(hold_id: HoldId, request: Request) -> JSONResponse:
    """Release the whole hold. Again: a replay; 409 ``hold_already_captured`` or
    ``hold_expired``; 404 ``hold_not_found``."""
    o = ctx(request).engine.void_hold(hold_id)
    return respond(request, o, 200)


@router.get("/{hold_id}", name="hold_get", response_model=HoldOut, responses=problems(404))
def get(hold_id: HoldId, request: Request) -> JSONResponse:
    """The hold as it stands (an open hold past its expiry reads ``expired``: it is released
    on its next touch or by the sweeper); balance and held are not part of this view."""
    o = ctx(request).engine.get_hold(hold_id)
    if o.status is None:
        return respond(request, o, 200)
    mark(request, "ok")
    return JSONResponse(hold_body(o))  # result: its place's outcome
