"""Debits, credits, batches and history through HTTP against a real ``tally serve``."""

from __future__ import annotations

import uuid

import httpx

from tests.serve.harness import Served
from tests.waiting import wait_for

PROBLEM = "application/problem+json"


def _account(api: httpx.Client, funds_minor: int = 0) -> str:
    account_id = f"acct-{uuid.uuid4().hex[:10]}"
    assert api.post("/v1/accounts", json={"id": account_id, "currency": "USD"}).status_code == 201
    if funds_minor:
        credit = {"transfer_id": f"fund-{account_id}", "account_id": account_id,
                  "amount_minor": funds_minor, "currency": "USD"}  # fmt: skip
        assert api.post("/v1/credits", json=credit).status_code == 201
    return account_id


def _debit(account_id: str, amount_minor: int, transfer_id: str | None = None) -> dict[str, object]:
    return {"transfer_id": transfer_id or f"d-{uuid.uuid4().hex}", "account_id": account_id,
            "amount_minor": amount_minor}  # fmt: skip


def test_a_replayed_debit_returns_the_first_response_and_moves_money_once(
    shared_served: Served,
) -> None:
    with shared_served.client() as api:
        account = _account(api, 1000)
        body = _debit(account, 300)
        first = api.post("/v1/debits", json=body)
        again = api.post(
            "/v1/debits", json=body, headers={"Idempotency-Key": str(body["transfer_id"])}
        )
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        assert first.json()["balance_minor"] == 700
        assert again.headers["Idempotent-Replayed"] == "true"
        assert api.get(f"/v1/accounts/{account}").json()["balance_minor"] == 700


def test_a_replayed_refusal_returns_the_same_refusal_even_after_a_top_up(
    shared_served: Served,
) -> None:
    with shared_served.client() as api:
        account = _account(api, 100)
        body = _debit(account, 500)
        first = api.post("/v1/debits", json=body)
        assert first.status_code == 402
        assert first.headers["content-type"] == PROBLEM
        assert first.json()["code"] == "insufficient_funds"
        top_up = {
            "transfer_id": f"t-{account}",
            "account_id": account,
            "amount_minor": 1000,
            "currency": "USD",
        }
        assert api.post("/v1/credits", json=top_up).status_code == 201
        again = api.post("/v1/debits", json=body)
        assert (again.status_code, again.json()) == (402, first.json())


def test_a_debit_id_reused_with_another_amount_is_409_with_the_result_code(
    shared_served: Served,
) -> None:
    with shared_served.client() as api:
        account = _account(api, 1000)
        body = _debit(account, 10)
        assert api.post("/v1/debits", json=body).status_code == 201
        conflict = api.post("/v1/debits", json={**body, "amount_minor": 11})
        assert conflict.status_code == 409
        assert conflict.json()["code"] == "exists_with_different_amount"
        assert conflict.json()["result_code"] == 2
        assert api.get(f"/v1/accounts/{account}").json()["balance_minor"] == 990


def test_a_credit_id_reused_with_another_amount_is_409_and_credits_nothing(
    shared_served: Served,
) -> None:
    with shared_served.client() as api:
        account = _account(api)
        body = {
            "transfer_id": f"c-{account}",
            "account_id": account,
            "amount_minor": 50,
            "currency": "USD",
        }
        first = api.post("/v1/credits", json=body)
        assert api.post("/v1/credits", json=body).json() == first.json()
        conflict = api.post("/v1/credits", json={**body, "amount_minor": 51})
        assert (conflict.status_code, conflict.json()["code"]) == (
            409,
            "exists_with_different_amount",
        )
        assert api.get(f"/v1/accounts/{account}").json()["balance_minor"] == 50


def test_a_replayed_currency_mismatch_returns_the_first_refusal_whole(
    shared_served: Served,
) -> None:
    """Invariant 1 for a refusal: same status, same body; another amount names the amount."""
    with shared_served.client() as api:
        account = _account(api, 100)
        body = {**_debit(account, 5), "currency": "EUR"}
        first = api.post("/v1/debits", json=body)
        again = api.post("/v1/debits", json=body)
        other = api.post("/v1/debits", json={**body, "amount_minor": 6})
        assert (first.status_code, first.json()["code"]) == (422, "currency_mismatch")
        assert first.json()["balance_minor"] == 100
        assert (again.status_code, again.json()) == (422, first.json())
        assert again.headers["Idempotent-Replayed"] == "true"
        assert (other.status_code, other.json()["code"]) == (409, "exists_with_different_amount")

        def recorded() -> list[dict[str, object]]:
            items = api.get(f"/v1/accounts/{account}/transfers").json()["items"]
            return [t for t in items if t["id"] == body["transfer_id"]]

        (row,) = wait_for(recorded, "the drainer to record the refused debit")
        assert (row["currency"], row["result"], row["amount_minor"]) == (
            "EUR",
            "currency_mismatch",
            5,
        )


def test_an_account_created_again_is_200_and_with_another_currency_409(
    shared_served: Served,
) -> None:
    with shared_served.client() as api:
        account = _account(api)
        same = api.post("/v1/accounts", json={"id": account, "currency": "USD"})
        other = api.post("/v1/accounts", json={"id": account, "currency": "EUR"})
        assert same.status_code == 200
        assert (other.status_code, other.json()["code"]) == (409, "exists_with_different_currency")


def test_an_idempotency_key_other_than_the_transfer_id_is_refused(shared_served: Served) -> None:
    with shared_served.client() as api:
        account = _account(api, 100)
        reply = api.post(
            "/v1/debits", json=_debit(account, 1), headers={"Idempotency-Key": "other"}
        )
        assert (reply.status_code, reply.json()["code"]) == (400, "idempotency_key_mismatch")
        assert api.get(f"/v1/accounts/{account}").json()["balance_minor"] == 100


def test_debits_on_a_suspended_or_missing_account_are_refused_with_their_codes(
    shared_served: Served,
) -> None:
    with shared_served.client() as api:
        account = _account(api, 100)
        assert api.patch(f"/v1/accounts/{account}", json={"status": "suspended"}).status_code == 200
        refused = api.post("/v1/debits", json=_debit(account, 1))
        assert (refused.status_code, refused.json()["code"]) == (422, "account_not_active")
        missing = api.post("/v1/debits", json=_debit("no-such-account", 1))
        assert (missing.status_code, missing.json()["code"]) == (404, "account_not_found")
        closed = api.post(f"/v1/accounts/{account}/close")
        assert closed.json()["status"] == "closed"


def test_a_batch_returns_one_result_per_debit_in_order(shared_served: Served) -> None:
    with shared_served.client() as api:
        account = _account(api, 5)
        debits = [_debit(account, 1) for _ in range(7)]
        reply = api.post("/v1/debits/batch", json={"debits": debits})
        assert reply.status_code == 200
        results = reply.json()["results"]
        assert [r["transfer_id"] for r in results] == [d["transfer_id"] for d in debits]
        assert [r["result"] for r in results] == ["ok"] * 5 + ["insufficient_funds"] * 2
        assert reply.json()["ok"] == 5
        again = api.post("/v1/debits/batch", json={"debits": debits})
        assert again.json() == reply.json()


def test_history_pages_through_every_drained_transfer_exactly_once(shared_served: Served) -> None:
    with shared_served.client() as api:
        account = _account(api, 1000)
        ids = {
            str(b["transfer_id"])
            for b in (_debit(account, 1) for _ in range(25))
            if api.post("/v1/debits", json=b).status_code == 201
        }
        ids.add(f"fund-{account}")

        def drained() -> bool:
            page = api.get(f"/v1/accounts/{account}/transfers", params={"limit": 1000}).json()
            return len(page["items"]) == len(ids)

        wait_for(drained, "the drainer to move every transfer into the ledger")
        seen: list[str] = []
        cursor = None
        for _ in range(20):
            params = {"limit": 4} | ({"after": cursor} if cursor else {})
            page = api.get(f"/v1/accounts/{account}/transfers", params=params).json()
            seen += [t["id"] for t in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids)


def test_metrics_count_operations_by_result_code(shared_served: Served) -> None:
    with shared_served.client() as api:
        account = _account(api)
        api.post("/v1/debits", json=_debit(account, 1))
        text = api.get("/metrics").text
        assert 'tally_api_operations_total{operation="debit",result="insufficient_funds"}' in text
        assert "tally_api_request_duration_seconds_bucket" in text
        assert "tally_drain_lag_seconds" in text
        assert 'tally_ready{reason=""} 1.0' in text


def test_hand_built_replies_match_their_documented_models(shared_served: Served) -> None:
    """The hot debit path and the batch route build their bodies without the models (speed);
    the models in the OpenAPI document must still describe them exactly."""
    from tally.api.schemas import BatchOut, TransferOut

    with shared_served.client() as api:
        account = _account(api, 1000)
        single = api.post("/v1/debits", json=_debit(account, 1))
        assert single.status_code == 201
        assert TransferOut.model_validate(single.json()).model_dump() == single.json()
        batch = api.post(
            "/v1/debits/batch", json={"debits": [_debit(account, 1), _debit(account, 5000)]}
        )
        assert batch.status_code == 200
        assert BatchOut.model_validate(batch.json()).model_dump() == batch.json()
        assert (batch.json()["ok"], batch.json()["refused"]) == (1, 1)


def test_a_debit_on_the_full_path_answers_as_the_hot_path_does(shared_served: Served) -> None:
    """A content type with parameters takes FastAPI's path; the plain one the hot path. Same
    replay, same refusal, same headers."""
    with shared_served.client() as api:
        account = _account(api, 100)
        body = _debit(account, 30)
        hot = api.post("/v1/debits", json=body)
        full = api.post(
            "/v1/debits",
            content=httpx.Request("POST", "/", json=body).content,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        again = api.post("/v1/debits", json=body)
        assert hot.status_code == full.status_code == again.status_code == 201
        assert full.json() == again.json() == hot.json()
        assert full.headers["Idempotent-Replayed"] == again.headers["Idempotent-Replayed"] == "true"
        refused = _debit(account, 1000)
        r_hot = api.post("/v1/debits", json=refused)
        r_full = api.post(
            "/v1/debits",
            content=httpx.Request("POST", "/", json=refused).content,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert r_hot.status_code == r_full.status_code == 402
        assert r_hot.json() == r_full.json()
        assert r_hot.headers["content-type"] == r_full.headers["content-type"]
