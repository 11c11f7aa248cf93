"""The holds API over a real ``tally serve``: the contract's statuses and stable codes, exact
replays (whole body), and bad input refused as 4xx problem+json with nothing written."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tally.domain.holds import HOLD_EXPIRES_S_MAX
from tests.serve.harness import Served
from tests.waiting import wait_for

ACCOUNT = "acct-holds"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def api(shared_served: Served) -> Iterator[httpx.Client]:
    with shared_served.client() as client:
        client.post("/v1/accounts", json={"id": ACCOUNT, "currency": "USD"})
        credit = {
            "transfer_id": "fund-holds",
            "account_id": ACCOUNT,
            "amount_minor": 1000,
            "currency": "USD",
        }
        assert client.post("/v1/credits", json=credit).status_code == 201
        yield client


def _account(api: httpx.Client) -> tuple[int, int, int]:
    a = api.get(f"/v1/accounts/{ACCOUNT}").json()
    return a["balance_minor"], a["held_minor"], a["available_minor"]


def _place(api: httpx.Client, hold_id: str, amount: int, **extra: object) -> httpx.Response:
    body = {"hold_id": hold_id, "account_id": ACCOUNT, "amount_minor": amount}
    return api.post("/v1/holds", json={"expires_in_s": 600, **body, **extra})


def _problem(reply: httpx.Response, status: int, code: str) -> None:
    assert (reply.status_code, reply.headers["content-type"]) == (status, PROBLEM), reply.text
    assert reply.json()["code"] == code


def test_place_capture_void_and_the_available_balance(api: httpx.Client) -> None:
    balance, held, available = _account(api)
    placed = _place(api, "http-h1", 300)
    assert placed.status_code == 201, placed.text
    assert placed.json()["status"] == "open"
    assert _account(api) == (balance, held + 300, available - 300)
    captured = api.post("/v1/holds/http-h1/capture", json={"amount_minor": 120})
    assert captured.status_code == 200, captured.text
    assert captured.json()["capture_transfer_id"].startswith("hc-")
    assert _account(api) == (balance - 120, held, available - 120)
    assert _place(api, "http-h2", 50).status_code == 201
    assert api.post("/v1/holds/http-h2/void").status_code == 200
    assert _account(api) == (balance - 120, held, available - 120)
    shown = api.get("/v1/holds/http-h1").json()
    assert (shown["status"], shown["captured_minor"]) == ("captured", 120)


def test_the_same_request_again_answers_the_first_outcome_exactly(api: httpx.Client) -> None:
    """Place, capture and void replays: same status, same whole body, the replay header; the
    place replay is the FIRST outcome (status open) even after the capture."""
    first_place = _place(api, "http-r1", 40)
    first_capture = api.post("/v1/holds/http-r1/capture", json={"amount_minor": 40})
    before = _account(api)
    again_place = _place(api, "http-r1", 40)
    again_capture = api.post("/v1/holds/http-r1/capture", json={"amount_minor": 40})
    for first, again in ((first_place, again_place), (first_capture, again_capture)):
        assert (again.status_code, again.json()) == (first.status_code, first.json())
        assert again.headers["Idempotent-Replayed"] == "true"
    assert first_place.json()["status"] == "open"
    assert _place(api, "http-r2", 10).status_code == 201
    first_void = api.post("/v1/holds/http-r2/void")
    again_void = api.post("/v1/holds/http-r2/void")
    assert (again_void.status_code, again_void.json()) == (200, first_void.json())
    refused = _place(api, "http-r3", 10**9)
    assert (_place(api, "http-r3", 10**9).json()) == refused.json()
    assert _account(api) == before


def test_a_place_with_other_parameters_is_a_conflict_and_writes_nothing(
    api: httpx.Client,
) -> None:
    assert _place(api, "http-c1", 25).status_code == 201
    before = _account(api)
    _problem(_place(api, "http-c1", 26), 409, "hold_id_conflict")
    _problem(_place(api, "http-c1", 25, expires_in_s=601), 409, "hold_id_conflict")
    other = {"hold_id": "http-c1", "account_id": "someone-else", "amount_minor": 25}
    _problem(api.post("/v1/holds", json={**other, "expires_in_s": 600}), 409, "hold_id_conflict")
    assert _account(api) == before
    assert api.get("/v1/holds/http-c1").json()["amount_minor"] == 25


BAD_PLACES: dict[str, dict[str, object]] = {
    "zero amount": {"amount_minor": 0},
    "negative amount": {"amount_minor": -5},
    "oversized amount": {"amount_minor": 10**13 + 1},
    "amount as a string": {"amount_minor": "5"},
    "zero expiry": {"expires_in_s": 0},
    "negative expiry": {"expires_in_s": -1},
    "oversized expiry": {"expires_in_s": HOLD_EXPIRES_S_MAX + 1},
    "fractional expiry": {"expires_in_s": 1.5},
    "bad hold id": {"hold_id": "h\u200b1"},
    "unknown field": {"partial": True},
}


@pytest.mark.parametrize("change", BAD_PLACES.values(), ids=BAD_PLACES.keys())
def test_a_malformed_place_is_a_400_problem_and_writes_nothing(
    api: httpx.Client, change: dict[str, object]
) -> None:
    before = _account(api)
    body = {"hold_id": "http-bad", "account_id": ACCOUNT, "amount_minor": 5, "expires_in_s": 60}
    reply = api.post("/v1/holds", json={**body, **change})
    assert (reply.status_code, reply.headers["content-type"]) == (400, PROBLEM)
    assert reply.json()["code"]
    assert _account(api) == before
    _problem(api.get("/v1/holds/http-bad"), 404, "hold_not_found")


def test_refused_captures_and_voids_have_stable_codes_and_write_nothing(
    api: httpx.Client,
) -> None:
    assert _place(api, "http-e1", 30).status_code == 201
    before = _account(api)
    _problem(api.post("/v1/holds/http-e1/capture", json={"amount_minor": 31}), 422,
             "capture_exceeds_hold")  # fmt: skip
    for bad in (0, -1, 10**13 + 1):
        reply = api.post("/v1/holds/http-e1/capture", json={"amount_minor": bad})
        assert reply.status_code == 400
    _problem(api.post("/v1/holds/nope/capture", json={"amount_minor": 1}), 404, "hold_not_found")
    _problem(api.post("/v1/holds/nope/void"), 404, "hold_not_found")
    _problem(api.get("/v1/holds/nope"), 404, "hold_not_found")
    assert _account(api) == before
    assert api.get("/v1/holds/http-e1").json()["status"] == "open"
    assert api.post("/v1/holds/http-e1/capture", json={"amount_minor": 30}).status_code == 200
    after_capture = _account(api)
    _problem(api.post("/v1/holds/http-e1/void"), 409, "hold_already_captured")
    _problem(api.post("/v1/holds/http-e1/capture", json={"amount_minor": 29}), 409,
             "hold_already_captured")  # fmt: skip
    assert _place(api, "http-e2", 30).status_code == 201
    assert api.post("/v1/holds/http-e2/void").status_code == 200
    voided = _account(api)
    _problem(api.post("/v1/holds/http-e2/capture", json={"amount_minor": 1}), 409, "hold_voided")
    assert _account(api) == voided
    assert after_capture[0] == voided[0]


def test_a_debit_sees_the_available_balance(api: httpx.Client) -> None:
    _balance, _held, available = _account(api)
    assert _place(api, "http-d1", available).status_code == 201
    debit = {"transfer_id": "http-d-debit", "account_id": ACCOUNT, "amount_minor": 1}
    _problem(api.post("/v1/debits", json=debit), 402, "insufficient_funds")
    assert api.post("/v1/holds/http-d1/void").status_code == 200
    assert api.post("/v1/debits", json={**debit, "transfer_id": "http-d-debit2"}).status_code == 201


def test_an_untouched_expired_hold_is_released_by_the_served_sweeper_and_never_captured(
    api: httpx.Client,
) -> None:
    """``tally serve`` runs the sweeper: a 1 s hold nobody touches is released (held back to
    where it was, with no request naming it); a capture afterwards is 409 ``hold_expired``."""
    before = _account(api)
    assert _place(api, "http-x1", 7, expires_in_s=1).status_code == 201
    assert _account(api)[1] == before[1] + 7
    wait_for(lambda: _account(api) == before, "the sweeper released the expired hold")
    _problem(api.post("/v1/holds/http-x1/capture", json={"amount_minor": 7}), 409, "hold_expired")
    assert api.get("/v1/holds/http-x1").json()["status"] == "expired"
    assert _account(api) == before
