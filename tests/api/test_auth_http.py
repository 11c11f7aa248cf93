"""Authentication and scopes through HTTP against a real ``tally serve``."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tally.config import child_env
from tests.serve.harness import Served

ROUTES = [
    ("GET", "/v1/accounts/acct-1"),
    ("GET", "/v1/accounts/no-such-account"),
    ("GET", "/v1/accounts"),
    ("POST", "/v1/accounts"),
    ("PATCH", "/v1/accounts/acct-1"),
    ("POST", "/v1/accounts/acct-1/close"),
    ("POST", "/v1/debits"),
    ("POST", "/v1/debits/batch"),
    ("POST", "/v1/credits"),
    ("GET", "/v1/accounts/acct-1/transfers"),
    ("POST", "/v1/admin/reconcile"),
    ("POST", "/v1/admin/rebuild"),
    ("POST", "/v1/admin/drain"),
    ("GET", "/metrics"),
    ("PUT", "/v1/accounts/acct-1/recharge-rule"),
    ("GET", "/v1/accounts/acct-1/recharge-rule"),
    ("DELETE", "/v1/accounts/acct-1/recharge-rule"),
    ("GET", "/v1/recharges"),
    ("GET", "/v1/recharges/rc-1"),
    ("GET", "/v1/admin/freeze"),
    ("POST", "/v1/admin/freeze"),
    ("POST", "/v1/admin/remediate"),
]


def _cli(served: Served, *args: str) -> dict[str, object]:
    env = child_env()
    out = subprocess.run(
        [sys.executable, "-m", "tally.cli.apikey_cmd", *args, "--home", str(served.home), "--json"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_but_health_refuses_a_request_without_a_key(
    shared_served: Served, method: str, path: str
) -> None:
    reply = httpx.request(method, shared_served.url + path, json={}, trust_env=False)
    assert reply.status_code == 401
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["code"] == "unauthenticated"


def test_a_wrong_key_gets_the_same_answer_for_existing_and_missing_accounts(
    shared_served: Served,
) -> None:
    with shared_served.client() as api:
        api.post("/v1/accounts", json={"id": "acct-exists", "currency": "USD"})
    wrong = shared_served.admin_key[:-4] + "AAAA"  # type: ignore[index]
    with shared_served.client(wrong) as api:
        existing = api.get("/v1/accounts/acct-exists")
        missing = api.get("/v1/accounts/acct-missing")
    assert existing.status_code == missing.status_code == 401
    assert existing.json() == missing.json()


def test_health_answers_without_a_key(shared_served: Served) -> None:
    assert httpx.get(shared_served.url + "/healthz", trust_env=False).status_code == 200
    assert httpx.get(shared_served.url + "/readyz", trust_env=False).json()["ready"] is True


def test_a_service_key_from_the_cli_works_but_not_on_admin_routes(shared_served: Served) -> None:
    created = _cli(shared_served, "create", "--scope", "service", "--label", "billing-app")
    key = str(created["key"])
    listed = _cli(shared_served, "list")
    assert key not in json.dumps(listed)  # only the id is kept, never the key
    with shared_served.client(key) as api:
        assert (
            api.post("/v1/accounts", json={"id": "acct-svc", "currency": "EUR"}).status_code == 201
        )
        admin = api.post("/v1/admin/reconcile")
    assert (admin.status_code, admin.json()["code"]) == (403, "forbidden")


def test_the_first_start_printed_an_admin_key_that_can_reconcile(shared_served: Served) -> None:
    with shared_served.client() as api:
        report = api.post("/v1/admin/reconcile")
    assert report.status_code == 200
    assert report.json()["accounts_drifted"] == 0
