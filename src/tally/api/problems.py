"""Errors as RFC 9457 ``application/problem+json``, each naming a stable ``code``.

Status codes (the contract):

    400 invalid_request, amount_invalid, id_invalid, unknown_currency, idempotency_key_mismatch
    401 unauthenticated (no key, or a key that is not valid)       403 forbidden (scope)
    402 insufficient_funds  (the request was fine; the account lacks funds)
    404 account_not_found, not_found
    409 exists_with_different_* (a transfer or account id reused with other parameters)
    413 body_too_large      415 unsupported_media_type
    422 account_not_active, currency_mismatch, balance_limit_exceeded (business refusals),
        occurred_outside_window, occurred_in_future (the idempotency window's age guard:
        nothing was written, and unlike the others these are not recorded with the id)
    503 store_lost, store_unavailable, store_read_only, store_loading, store_not_enough_replicas,
        store_backpressure, outcome_unknown, ledger_unavailable, not_ready (with Retry-After)

Holds (``routes/holds.py``): 402 insufficient_funds, 404 hold_not_found, 409 hold_id_conflict,
hold_expired, hold_already_captured, hold_voided, 422 capture_exceeds_hold.

Refusals of a transfer are recorded with its id: a replay returns the same status and body.
A 503 answers its own attempt only (nothing written by it, or its outcome unknown): after an
attempt of an id whose outcome was unknown, a later 503 such as store_lost decides nothing about
that earlier attempt; retry the same id until an answer decides it (2xx, or a 4xx with the id).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tally.domain.results import Result
from tally.errors import (
    InfrastructureError,
    InvalidAmount,
    InvalidId,
    LedgerError,
    StoreBackpressure,
    StoreError,
    StoreLoading,
    StoreLost,
    StoreNotEnoughReplicas,
    StoreOutcomeUnknown,
    StoreReadOnly,
    TallyError,
    UnknownCurrency,
    UsageError,
)

PROBLEM = "application/problem+json"
TYPE_BASE = "https://tally.invalid/problems/"
RETRY_AFTER_S = 1
ERRORS_LISTED_MAX = 20

RESULT_STATUS: dict[Result, int] = {
    Result.ok: 201,
    Result.exists: 200,
    Result.insufficient_funds: 402,
    Result.account_not_found: 404,
    Result.account_not_active: 422,
    Result.currency_mismatch: 422,
    Result.amount_invalid: 400,
    Result.balance_limit_exceeded: 422,
    Result.id_invalid: 400,
    Result.store_lost: 503,
    Result.occurred_outside_window: 422,
    Result.occurred_in_future: 422,
}


def result_status(result: Result) -> int:
    if result.is_replay_conflict:
        return 409
    return RESULT_STATUS.get(result, 422)


class Problem(Exception):
    """Raised by routes; rendered by ``problem_response``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str = "",
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or code)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra
        self.headers = headers or {}


def problem_response(
    status: int, code: str, detail: str = "", *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
    }
    body.update(extra)
    all_headers = dict(headers or {})
    if status == 503:
        all_headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=all_headers)


def refusal(result: Result, detail: str = "", **extra: Any) -> Problem:
    return Problem(result_status(result), result.name, detail, result_code=int(result), **extra)


def error_code(exc: TallyError) -> str:
    for kind, code in (
        (StoreLost, "store_lost"),
        (StoreOutcomeUnknown, "outcome_unknown"),
        (StoreReadOnly, "store_read_only"),
        (StoreLoading, "store_loading"),
        (StoreNotEnoughReplicas, "store_not_enough_replicas"),
        (StoreBackpressure, "store_backpressure"),
        (StoreError, "store_unavailable"),
        (LedgerError, "ledger_unavailable"),
        (InfrastructureError, "infrastructure_unavailable"),
        (InvalidAmount, "amount_invalid"),
        (InvalidId, "id_invalid"),
        (UnknownCurrency, "unknown_currency"),
    ):
        if isinstance(exc, kind):
            return code
    return "invalid_request"


def _mark(request: Request, code: str) -> None:
    request.state.tally_result = code


async def on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    _mark(request, exc.code)
    return problem_response(exc.status, exc.code, exc.detail, headers=exc.headers, **exc.extra)


async def on_tally_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TallyError)
    code = error_code(exc)
    _mark(request, code)
    if isinstance(exc, UsageError):
        return problem_response(400, code, str(exc.args[0]) if exc.args else "", hint=exc.hint)
    if isinstance(exc, InfrastructureError):
        # The message names hosts and internals an API client has no use for: code and hint.
        return problem_response(503, code, exc.hint, hint=exc.hint)
    raise exc  # a TallyError of no known kind: a bug, never dressed up


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    _mark(request, "invalid_request")
    errors = []
    for err in exc.errors()[:ERRORS_LISTED_MAX]:  # never echo the input back: it may be huge
        loc = [str(p)[:64] for p in err.get("loc", ())]
        errors.append({"loc": loc, "msg": str(err.get("msg", ""))[:200], "type": err.get("type")})
    return problem_response(400, "invalid_request", "the request is malformed", errors=errors)


async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {
        400: "invalid_request",
        401: "unauthenticated",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "body_too_large",
        415: "unsupported_media_type",
    }
    code = codes.get(exc.status_code, "http_error")
    _mark(request, code)
    detail = exc.detail if isinstance(exc.detail, str) else code
    return problem_response(exc.status_code, code, detail, headers=dict(exc.headers or {}))


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: answer 500 as a problem without internals (the log has the traceback)."""
    _mark(request, "internal_error")
    return problem_response(500, "internal_error", "an unexpected error; see the server log")
