"""``JsonResponse`` (pydantic-core's serializer) writes the same bytes as Starlette's
``JSONResponse`` for what the transfer routes answer: results, refusals as problems, batches,
ids and currencies with non-ASCII characters, control characters, the largest amounts."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.responses import JSONResponse

from tally.api.responses import JsonResponse
from tally.domain.limits import BALANCE_MINOR_MAX

ITEM = {
    "transfer_id": "d-1",
    "kind": "debit",
    "account_id": "acct-1",
    "amount_minor": 1,
    "currency": None,
    "status": "ok",
    "result": "ok",
    "result_code": 0,
    "balance_minor": -BALANCE_MINOR_MAX,
}


@pytest.mark.parametrize(
    "content",
    [
        ITEM,
        {**ITEM, "transfer_id": 'é\u2028\U0001f600"\\\n\t\x00/<>&', "currency": "EUR"},
        {"results": [ITEM] * 3, "ok": 3, "refused": 0, "unknown": 0},
        {"type": "https://tally.invalid/problems/x", "status": 402, "ok": True, "none": None},
        {"results": [], "ok": 0, "refused": 0, "unknown": 0},
    ],
)
def test_the_same_bytes_as_starlettes_json_response(content: Any) -> None:
    ours, theirs = JsonResponse(content), JSONResponse(content)
    assert ours.body == theirs.body
    assert ours.raw_headers == theirs.raw_headers
