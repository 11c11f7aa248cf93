"""occurred_at over HTTP: the idempotency window's age guard (README, "Idempotency window").

``tally serve`` runs with the default window (7 days), so an event 8 days old is outside it."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.serve.harness import Served

DAY_MS = 86_400_000


def _account(api: httpx.Client, funds_minor: int) -> str:
    account_id = f"acct-{uuid.uuid4().hex[:10]}"
    assert api.post("/v1/accounts", json={"id": account_id, "currency": "USD"}).status_code == 201
    credit = {"transfer_id": f"fund-{account_id}", "account_id": account_id,
              "amount_minor": funds_minor, "currency": "USD"}  # fmt: skip
    assert api.post("/v1/credits", json=credit).status_code == 201
    return account_id


def _debit(account_id: str, occurred_at: object) -> dict[str, object]:
    return {"transfer_id": f"d-{uuid.uuid4().hex}", "account_id": account_id,
            "amount_minor": 10, "occurred_at": occurred_at}  # fmt: skip


def _balance(api: httpx.Client, account_id: str) -> int:
    return int(api.get(f"/v1/accounts/{account_id}").json()["balance_minor"])


def test_a_debit_that_occurred_before_the_window_is_refused_and_not_recorded(
    shared_served: Served,
) -> None:
    """8 days ago (epoch ms, then RFC 3339) is 422 occurred_outside_window with nothing written;
    the refusal is not recorded with the id, so the same id sent as occurring now applies.
    Without the guard the first two are 201 and the balance moves."""
    with shared_served.client() as api:
        account = _account(api, 1000)
        old_ms = int(time.time() * 1000) - 8 * DAY_MS
        old_text = (datetime.now(UTC) - timedelta(days=8)).isoformat()
        for occurred in (old_ms, old_text):
            body = _debit(account, occurred)
            refused = api.post("/v1/debits", json=body)
            assert refused.status_code == 422, refused.text
            assert refused.json()["code"] == "occurred_outside_window"
            assert refused.json()["result_code"] == 30
        assert _balance(api, account) == 1000
        now = api.post("/v1/debits", json={**body, "occurred_at": None})
        assert (now.status_code, now.json()["balance_minor"]) == (201, 990)
        assert _balance(api, account) == 990


def test_a_debit_dated_ahead_of_the_servers_clock_is_refused(shared_served: Served) -> None:
    with shared_served.client() as api:
        account = _account(api, 1000)
        ahead = api.post("/v1/debits", json=_debit(account, int(time.time() * 1000) + DAY_MS))
        assert (ahead.status_code, ahead.json()["code"]) == (422, "occurred_in_future")
        assert _balance(api, account) == 1000


def test_occurred_at_inside_the_window_applies_in_either_format_single_and_batch(
    shared_served: Served,
) -> None:
    with shared_served.client() as api:
        account = _account(api, 1000)
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        as_text = hour_ago.isoformat().replace("+00:00", "Z")
        assert api.post("/v1/debits", json=_debit(account, as_text)).status_code == 201
        as_ms = int(hour_ago.timestamp() * 1000)
        batch = {"debits": [_debit(account, as_ms), _debit(account, as_ms - 8 * DAY_MS)]}
        got = api.post("/v1/debits/batch", json=batch)
        assert got.status_code == 200, got.text
        assert [r["result"] for r in got.json()["results"]] == ["ok", "occurred_outside_window"]
        assert _balance(api, account) == 980


@pytest.mark.parametrize(
    "occurred_at", ["yesterday", "2026-12-04T06:00:00", "2026-12-04", -1, 1.5e12, True, "1e12"]
)
def test_a_malformed_occurred_at_is_400_and_writes_nothing(
    shared_served: Served, occurred_at: object
) -> None:
    with shared_served.client() as api:
        account = _account(api, 1000)
        bad = api.post("/v1/debits", json=_debit(account, occurred_at))
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_request"), bad.text
        assert _balance(api, account) == 1000
