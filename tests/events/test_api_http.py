"""Events and webhooks through HTTP against a real ``tally serve`` (its delivery worker
included): endpoint registration (secret shown once), signed delivery to a loopback receiver,
the pull API, balance alerts, metrics, scopes, and bad input as 4xx problems that write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tally.config import child_env
from tests.serve.harness import Served
from tests.waiting import wait_for

from .conftest import Receiver

PROBLEM = "application/problem+json"


@pytest.fixture
def api(shared_served: Served) -> Iterator[httpx.Client]:
    with shared_served.client() as client:
        yield client
        client.post("/v1/admin/freeze", json={"on": False, "reason": "test over"})
        for endpoint in client.get("/v1/webhook-endpoints").json()["items"]:
            client.delete(f"/v1/webhook-endpoints/{endpoint['id']}")


def _events(api: httpx.Client, after: int = 0, **params: Any) -> dict[str, Any]:
    answer = api.get("/v1/events", params={"after": after, "limit": 1000, **params})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def _problem(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    assert answer.json()["code"] == code


def test_an_endpoint_receives_signed_events_and_the_pull_api_has_the_same(
    api: httpx.Client, receiver: Receiver
) -> None:
    start = _events(api)["next_cursor"]
    created = api.post("/v1/webhook-endpoints", json={"url": receiver.url})
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["secret"].startswith("whsec_") and endpoint["event_types"] is None
    receiver.secret = endpoint["secret"]
    listed = api.get("/v1/webhook-endpoints").json()["items"]
    assert [(e["id"], e["secret"]) for e in listed] == [(endpoint["id"], None)]  # shown once
    assert api.post("/v1/admin/freeze", json={"on": True, "reason": "drill"}).status_code == 200
    assert api.post("/v1/admin/freeze", json={"on": False, "reason": "over"}).status_code == 200
    wait_for(lambda: len(receiver.received) >= 2, "two webhooks")
    assert receiver.rejected == []
    sent = [r["event"] for r in receiver.received]
    assert [(e["type"], e["data"]["reason"]) for e in sent] == [
        ("billing.frozen", "drill"),
        ("billing.unfrozen", "over"),
    ]
    pulled = _events(api, start)
    assert pulled["items"] == sent  # the same events, the same ids and cursors
    assert _events(api, pulled["next_cursor"]) == {
        "items": [],
        "next_cursor": pulled["next_cursor"],
    }
    only = _events(api, start, type="billing.unfrozen")["items"]
    assert [e["type"] for e in only] == ["billing.unfrozen"]
    deliveries = api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries").json()["items"]
    assert [d["state"] for d in deliveries] == ["delivered", "delivered"]
    metrics = api.get("/metrics").text
    assert 'tally_webhook_deliveries{state="delivered"}' in metrics
    assert "tally_events_outbox_cursor" in metrics
    assert api.delete(f"/v1/webhook-endpoints/{endpoint['id']}").status_code == 204
    _problem(
        api.delete(f"/v1/webhook-endpoints/{endpoint['id']}"), 404, "webhook_endpoint_not_found"
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://127.0.0.1/hook"}, "webhook_url_invalid"),
        ({"url": "javascript:alert(1)"}, "webhook_url_invalid"),
        ({"url": "http:///no-host"}, "webhook_url_invalid"),
        ({"url": "https://user:pw@example.invalid/hook"}, "webhook_url_invalid"),
        ({"url": "not a url"}, "webhook_url_invalid"),
        # The suite's egress policy (tests/conftest.py) reaches the served child:
        ({"url": "https://hooks.example.com/tally"}, "webhook_url_not_allowed"),
        ({"url": "http://127.0.0.1/h", "secret": "whsec_c2hvcnQ="}, "webhook_secret_invalid"),
        (
            {"url": "http://127.0.0.1/h", "secret": "plain-secret-without-prefix"},
            "webhook_secret_invalid",
        ),
        (
            {"url": "http://127.0.0.1/h", "secret": "whsec_!!!notbase64!!!"},
            "webhook_secret_invalid",
        ),
        ({"url": "http://127.0.0.1/h", "event_types": ["account.exploded"]}, "event_types_invalid"),
        ({"url": "http://127.0.0.1/h", "event_types": []}, "event_types_invalid"),
        ({"url": 5}, "invalid_request"),
        ({"url": "http://127.0.0.1/h", "extra": 1}, "invalid_request"),
    ],
)
def test_bad_endpoint_definitions_are_400_problems_and_write_nothing(
    api: httpx.Client, body: dict[str, Any], code: str
) -> None:
    _problem(api.post("/v1/webhook-endpoints", json=body), 400, code)
    assert api.get("/v1/webhook-endpoints").json()["items"] == []


def test_a_caller_given_secret_of_the_right_size_is_accepted(api: httpx.Client) -> None:
    secret = "whsec_" + "QUJD" * 8  # 24 bytes
    answer = api.post(
        "/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/h", "secret": secret}
    )
    assert answer.status_code == 201 and answer.json()["secret"] == secret


def test_unknown_and_malformed_endpoint_ids(api: httpx.Client) -> None:
    missing = "we_" + "0" * 32
    _problem(api.get(f"/v1/webhook-endpoints/{missing}"), 404, "webhook_endpoint_not_found")
    _problem(api.delete(f"/v1/webhook-endpoints/{missing}"), 404, "webhook_endpoint_not_found")
    _problem(
        api.get(f"/v1/webhook-endpoints/{missing}/deliveries"), 404, "webhook_endpoint_not_found"
    )
    _problem(api.delete("/v1/webhook-endpoints/nope"), 400, "invalid_request")


def test_bad_pull_parameters_are_400(api: httpx.Client) -> None:
    for params in (
        {"after": -1},
        {"after": 2**70},
        {"limit": 0},
        {"limit": 1001},
        {"type": "nope"},
        {"after": "x"},
    ):
        _problem(api.get("/v1/events", params=params), 400, "invalid_request")


def _service_key(served: Served) -> str:
    argv = [sys.executable, "-m", "tally.cli.apikey_cmd", "create", "--scope", "service"]
    argv += ["--label", "events-tests", "--home", str(served.home), "--json"]
    out = subprocess.run(
        argv, capture_output=True, text=True, env=child_env(), timeout=60, check=True
    )
    return str(json.loads(out.stdout)["key"])


def test_webhook_endpoints_take_an_admin_key_and_events_a_service_key(
    shared_served: Served,
) -> None:
    with shared_served.client(_service_key(shared_served)) as service:
        _problem(service.get("/v1/webhook-endpoints"), 403, "forbidden")
        _problem(
            service.post("/v1/webhook-endpoints", json={"url": "http://x/h"}), 403, "forbidden"
        )
        assert service.get("/v1/events").status_code == 200
    with httpx.Client(base_url=shared_served.url, trust_env=False) as anonymous:
        _problem(anonymous.get("/v1/events"), 401, "unauthenticated")


def test_a_balance_alert_emits_balance_low_once_the_drainer_records_the_crossing(
    api: httpx.Client,
) -> None:
    start = _events(api)["next_cursor"]
    _problem(
        api.put("/v1/accounts/nobody-ev/balance-alert", json={"threshold_minor": 5}),
        404,
        "account_not_found",
    )
    _problem(api.get("/v1/accounts/nobody-ev/balance-alert"), 404, "balance_alert_not_found")
    assert api.post("/v1/accounts", json={"id": "low-ev", "currency": "USD"}).status_code == 201
    credit = {"transfer_id": "low-ev-c", "account_id": "low-ev", "amount_minor": 1000}
    assert api.post("/v1/credits", json={**credit, "currency": "USD"}).status_code == 201
    put = api.put("/v1/accounts/low-ev/balance-alert", json={"threshold_minor": 500})
    assert put.json() == {"account_id": "low-ev", "threshold_minor": 500, "below": False}
    _problem(
        api.put("/v1/accounts/low-ev/balance-alert", json={"threshold_minor": "5"}),
        400,
        "invalid_request",
    )
    debit = {"transfer_id": "low-ev-d", "account_id": "low-ev", "amount_minor": 700}
    assert api.post("/v1/debits", json=debit).status_code == 201
    lows = wait_for(
        lambda: [e for e in _events(api, start)["items"] if e["type"] == "balance.low"],
        "balance.low",
    )
    assert [e["data"] for e in lows] == [
        {"account_id": "low-ev", "balance_minor": 300, "threshold_minor": 500}
    ]
    assert api.get("/v1/accounts/low-ev/balance-alert").json()["below"] is True
    assert api.delete("/v1/accounts/low-ev/balance-alert").status_code == 204
    _problem(api.delete("/v1/accounts/low-ev/balance-alert"), 404, "balance_alert_not_found")
