"""Accounts: create (idempotent by id), read with balance and status, update, close, list."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from tally.api.auth import service_key
from tally.api.problems import Problem, refusal
from tally.api.routes.common import AccountId, ctx, mark, problems
from tally.api.schemas import AccountCreate, AccountOut, AccountsPage, AccountUpdate
from tally.domain.accounts import Account, AccountState, AccountStatus
from tally.domain.money import format_amount
from tally.domain.results import Result

router = APIRouter(prefix="/v1/accounts", tags=["accounts"], dependencies=[Depends(service_key)])

PAGE_MAX = 1000


def account_view(request: Request, state: AccountState) -> dict[str, Any]:
    a = state.account
    extensions: dict[str, Any] = {}
    for ext in ctx(request).extensions:
        extensions.update(ext.account_fields(a.id))
    return AccountOut(
        id=a.id,
        currency=a.currency,
        status=a.status.value,
        credit_limit_minor=a.credit_limit_minor,
        balance_minor=state.balance_minor,
        balance=format_amount(state.balance_minor, a.currency),
        held_minor=state.held_minor,
        available_minor=state.available_minor,
        extensions=extensions,
    ).model_dump()


def _read(request: Request, account_id: str) -> dict[str, Any]:
    state = ctx(request).engine.account(account_id)
    if state is None:
        raise refusal(Result.account_not_found, f"no account {account_id!r}")
    return account_view(request, state)


@router.post(
    "",
    name="account_create",
    status_code=201,
    response_model=AccountOut,
    responses={
        **problems(409),
        200: {"model": AccountOut, "description": "already exists, same definition"},
    },
)
def create_account(body: AccountCreate, request: Request) -> JSONResponse:
    """Create an account (prepaid unless ``credit_limit_minor`` > 0). Creating it again with the
    same definition answers 200 with the account; with another definition 409."""
    account = Account(body.id, body.currency, body.credit_limit_minor)
    result = ctx(request).engine.create_account(account)
    if result not in (Result.ok, Result.exists):
        raise refusal(result, f"account {body.id!r} exists with another definition")
    mark(request, result.name)
    return JSONResponse(_read(request, body.id), status_code=201 if result is Result.ok else 200)


@router.get("", name="account_list", response_model=AccountsPage, responses=problems())
def list_accounts(
    request: Request,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
) -> dict[str, Any]:
    """Accounts in id order (definitions and store balances), a page at a time."""
    context = ctx(request)
    page = context.ledger.list_accounts(after=after, limit=limit)
    states = context.engine.accounts([a.id for a in page]) if page else {}
    items = [account_view(request, s) for s in states.values() if s is not None]
    return {"items": items, "next_cursor": page[-1].id if len(page) == limit else None}


@router.get("/{account_id}", name="account_get", response_model=AccountOut, responses=problems(404))
def get_account(account_id: AccountId, request: Request) -> dict[str, Any]:
    """The account with its hot balance (the store's, including undrained debits)."""
    return _read(request, account_id)


@router.patch(
    "/{account_id}", name="account_update", response_model=AccountOut, responses=problems(404)
)
def update_account(account_id: AccountId, body: AccountUpdate, request: Request) -> dict[str, Any]:
    """Change the credit limit, or suspend / reactivate the account."""
    engine = ctx(request).engine
    if body.credit_limit_minor is None and body.status is None:
        raise Problem(
            400, "invalid_request", "nothing to update: give credit_limit_minor or status"
        )
    if ctx(request).ledger.get_account(account_id) is None:
        raise refusal(Result.account_not_found, f"no account {account_id!r}")
    if body.credit_limit_minor is not None:
        result = engine.set_credit_limit(account_id, body.credit_limit_minor)
        if result is not Result.ok:
            raise refusal(result)
    if body.status is not None:
        result = engine.set_status(account_id, AccountStatus(body.status))
        if result is not Result.ok:
            raise refusal(result)
    mark(request, "ok")
    return _read(request, account_id)


@router.post(
    "/{account_id}/close", name="account_close", response_model=AccountOut, responses=problems(404)
)
def close_account(account_id: AccountId, request: Request) -> dict[str, Any]:
    """Close the account: no further debits or credits. Idempotent."""
    result = ctx(request).engine.set_status(account_id, AccountStatus.closed)
    if result is not Result.ok:
        raise refusal(result, f"cannot close {account_id!r}")
    mark(request, "ok")
    return _read(request, account_id)
