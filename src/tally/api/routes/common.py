"""Helpers the route modules share: the context, path parameters, the standard error responses."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request

from tally.api.context import ApiContext
from tally.api.problems import PROBLEM
from tally.api.schemas import ID_PATTERN, ProblemOut
from tally.domain.limits import ID_LEN_MAX

AccountId = Annotated[
    str, Path(min_length=1, max_length=ID_LEN_MAX, pattern=ID_PATTERN, description="account id")
]


def ctx(request: Request) -> ApiContext:
    context = request.app.state.tally
    assert isinstance(context, ApiContext)
    return context


def mark(request: Request, result: str) -> None:
    """The result code this request ended with, for the operations metric."""
    request.state.tally_result = result


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for problem responses (every route can also answer 400, 401, 503)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({400, 401, 413, 503, *statuses}):
        out[status] = {"model": ProblemOut, "content": {PROBLEM: {}}, "description": "a problem"}
    return out
