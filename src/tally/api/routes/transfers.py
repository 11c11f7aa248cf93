"""Debits and credits. The transfer id in the body is the idempotency key: a replay returns the
first outcome, the same status and the same body (``Idempotent-Replayed: true`` says so); the same
id with other parameters is 409 with the ``exists_with_different_*`` code. ``Idempotency-Key``,
when sent, must equal the transfer id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from tally.api.auth import service_key
from tally.api.problems import PROBLEM, Problem, refusal, result_status
from tally.api.responses import JsonResponse
from tally.api.routes.common import AccountId, ctx, mark, problems
from tally.api.schemas import (
    BatchIn,
    BatchOut,
    CreditIn,
    DebitIn,
    TransferOut,
    TransfersPageOut,
)
from tally.domain.accounts import SystemAccount
from tally.domain.limits import ID_LEN_MAX
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.errors import StoreError, StoreLost, StoreOutcomeUnknown
from tally.store.transfer_codec import Settled

router = APIRouter(prefix="/v1", tags=["transfers"], dependencies=[Depends(service_key)])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=ID_LEN_MAX, description="must equal transfer_id"),
]
REPLAYED = "Idempotent-Replayed"


def _check_key(key: str | None, transfer_id: str) -> None:
    if key is not None and key != transfer_id:
        raise Problem(400, "idempotency_key_mismatch", "Idempotency-Key must equal transfer_id")


def out(
    kind: str, body: DebitIn | CreditIn, result: Result | None, balance_minor: int | None
) -> dict[str, Any]:
    """``TransferOut``'s fields, built directly (a model and its dump cost more than the debit
    on the hot path; tests/api check the shape against the model)."""
    status = "pending" if result is None else ("ok" if result.is_success else "refused")
    return {
        "transfer_id": body.transfer_id,
        "kind": kind,
        "account_id": body.account_id,
        "amount_minor": body.amount_minor,
        "currency": body.currency,
        "status": status,
        "result": "pending" if result is None else result.name,
        "result_code": None if result is None else int(result),
        "balance_minor": balance_minor,
    }


def respond(
    request: Request, out: dict[str, Any], result: Result | None, replayed: bool
) -> JsonResponse:
    mark(request, out["result"])
    headers = {REPLAYED: "true"} if replayed else {}
    if result is None:
        return JsonResponse(out, status_code=202, headers=headers)
    status = result_status(result)
    if result.is_success:
        return JsonResponse(out, status_code=201, headers=headers)
    problem = {
        **{k: v for k, v in out.items() if k != "status"},  # "status" is the HTTP status here
        "type": f"https://tally.invalid/problems/{result.name}",
        "title": result.name.replace("_", " "),
        "status": status,
        "code": result.name,
        "detail": f"transfer {out['transfer_id']} refused: {result.name}",
    }
    return JsonResponse(problem, status_code=status, media_type=PROBLEM, headers=headers)


TRANSFER_RESPONSES = problems(402, 404, 409, 422) | {
    201: {"model": TransferOut, "description": "applied (or a replay of an applied transfer)"}
}


@router.post("/debits", name="debit", status_code=201, responses=TRANSFER_RESPONSES)
async def debit(
    body: DebitIn, request: Request, idempotency_key: IdempotencyKey = None
) -> JsonResponse:
    """Debit usage from an account: 201 applied, 402 insufficient funds, 404 no account, 409 the
    id was used with other parameters, 422 other refusals (account not active, currency)."""
    _check_key(idempotency_key, body.transfer_id)
    context = ctx(request)
    args = (
        body.transfer_id,
        body.account_id,
        body.amount_minor,
        body.currency or "",
        body.occurred_at_ms,
    )
    if context.async_debit is not None:
        r = await context.async_debit(*args)
    else:  # the hot path's fallback: the engine off the event loop
        r = await run_in_threadpool(context.engine.debit, *args)
    return respond(request, out("debit", body, r.result, r.balance_minor), r.result, r.replayed)


@router.post(
    "/credits",
    name="credit",
    status_code=201,
    responses=TRANSFER_RESPONSES
    | {
        202: {
            "model": TransferOut,
            "description": "durable in the ledger, applied when the store is back",
        }
    },
)
async def credit(
    body: CreditIn, request: Request, idempotency_key: IdempotencyKey = None
) -> JsonResponse:
    """Credit money in. Written to the ledger first: if the store is unavailable the answer is
    202 ``pending`` and the credit is applied, exactly once, when it is back."""
    _check_key(idempotency_key, body.transfer_id)
    context = ctx(request)
    args = (
        body.transfer_id,
        body.account_id,
        body.amount_minor,
        body.currency,
        SystemAccount(body.source),
    )
    if context.async_credit is not None:  # the store step joins the debits' coalescer
        o = await context.async_credit(*args)
    else:
        o = await run_in_threadpool(context.engine.credit, *args)
    return respond(request, out("credit", body, o.result, o.balance_minor), o.result, o.replayed)


@router.post("/debits/batch", name="debit_batch", response_model=BatchOut, responses=problems())
async def debit_batch(body: BatchIn, request: Request) -> JsonResponse:
    """Up to 1000 debits in one request, one result each, in order; each idempotent by id."""
    return await batch(request, body)


async def batch(request: Request, body: BatchIn) -> JsonResponse:
    """The batch route's work, shared with ``api.hot`` (which parses the body itself)."""
    items = [
        (d.transfer_id, d.account_id, d.amount_minor, d.currency or "", d.occurred_at_ms)
        for d in body.debits
    ]
    try:
        applied = await run_in_threadpool(ctx(request).engine.debit_many, items)
    except StoreError as exc:
        settled: Settled | None = getattr(exc, "settled", None)
        if settled is None or len(settled.results) != len(body.debits):
            raise
        if all(e is not None for e in settled.errors):
            raise  # no item decided: the whole batch failed, the 503 problem says so
        results = [
            _settled_out(d, r, e)
            for d, r, e in zip(body.debits, settled.results, settled.errors, strict=True)
        ]
    else:
        results = [
            out("debit", d, r.result, r.balance_minor)
            for d, r in zip(body.debits, applied.results, strict=True)
        ]
    ok = sum(1 for r in results if r["status"] == "ok")
    unknown = sum(1 for r in results if r["status"] == "unknown")
    mark(request, "ok" if ok == len(results) else "partial")
    # A response, not a dict: FastAPI would validate and re-encode 1000 results against
    # BatchOut (measured: about as long as the debits themselves); ``out`` builds that shape.
    answer = {"results": results, "ok": ok, "refused": len(results) - ok - unknown}
    return JsonResponse({**answer, "unknown": unknown})


def _settled_out(
    d: DebitIn, result: TransferResult | None, error: StoreError | None
) -> dict[str, Any]:
    """A batch item when the store failed for part of the batch (a cluster shard): its own
    outcome when decided; refused ``store_lost`` when its shard's dataset is lost (the script
    refused it: nothing written); else ``unknown`` (retry it by id)."""
    if error is None and result is not None:
        return out("debit", d, result.result, result.balance_minor)
    if isinstance(error, StoreLost):
        return out("debit", d, Result.store_lost, None)
    item = out("debit", d, None, None)
    item["status"] = "unknown"
    item["result"] = (
        "outcome_unknown" if isinstance(error, StoreOutcomeUnknown) else "store_unavailable"
    )
    return item


@router.get(
    "/accounts/{account_id}/transfers",
    name="transfer_history",
    response_model=TransfersPageOut,
    responses=problems(404),
)
def history(
    account_id: AccountId,
    request: Request,
    after: Annotated[str | None, Query(max_length=100, description="next_cursor of a page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The account's transfers from the ledger of record (drained ones), oldest first."""
    ledger = ctx(request).ledger
    if ledger.get_account(account_id) is None:
        raise refusal(Result.account_not_found, f"no account {account_id!r}")
    page = ledger.transfers_page(account_id, after=after, limit=limit)
    items = [
        {
            "id": t.id,
            "kind": t.kind.value,
            "account_id": t.account_id,
            "debit_account_id": t.debit_account_id,
            "credit_account_id": t.credit_account_id,
            "amount_minor": t.amount_minor,
            "currency": t.currency,
            "result": t.result.name,
            "result_code": int(t.result),
            "balance_after_minor": t.balance_after_minor,
            "ts_ms": t.ts_ms,
            "epoch_id": t.epoch_id,
        }
        for t in page.items
    ]
    return {"items": items, "next_cursor": page.next_cursor}
