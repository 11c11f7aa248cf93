"""The recharge routes through HTTP against a real ``tally serve``: the recharge rule, the
account's recharge state, recharges (list, get), the billing freeze, remediation, their metrics,
and which key scope each one takes."""

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

RULE = {
    "card_id": "card_ok",
    "threshold_minor": 500,
    "target_minor": 2000,
    "daily_cap_minor": 100_000,
}


def _service_key(served: Served) -> str:
    env = child_env()
    argv = [sys.executable, "-m", "tally.cli.apikey_cmd", "create", "--scope", "service"]
    argv += ["--label", "recharge-tests", "--home", str(served.home), "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=True)
    return str(json.loads(out.stdout)["key"])


@pytest.fixture
def api(shared_served: Served) -> Iterator[httpx.Client]:
    with shared_served.client() as client:
        yield client
        client.post("/v1/admin/freeze", json={"on": False, "reason": "test over"})


def _account(api: httpx.Client, account_id: str, funds_minor: int = 1000) -> None:
    assert api.post("/v1/accounts", json={"id": account_id, "currency": "USD"}).status_code == 201
    credit = {
        "transfer_id": f"fund-{account_id}",
        "account_id": account_id,
        "amount_minor": funds_minor,
        "currency": "USD",
    }
    assert api.post("/v1/credits", json=credit).status_code == 201


def _open_waiting_recharge(api: httpx.Client, account_id: str) -> dict[str, Any]:
    """Frozen billing: the debit opens a recharge that waits (drained into the ledger)."""
    _account(api, account_id)
    assert api.put(f"/v1/accounts/{account_id}/recharge-rule", json=RULE).status_code == 200
    assert api.post("/v1/admin/freeze", json={"on": True, "reason": "hold"}).status_code == 200
    debit = {"transfer_id": f"{account_id}-d1", "account_id": account_id, "amount_minor": 600}
    assert api.post("/v1/debits", json=debit).status_code == 201

    def listed() -> dict[str, Any] | None:
        items = api.get("/v1/recharges", params={"account": account_id}).json()["items"]
        return items[0] if items and "frozen" in (items[0]["wait_reason"] or "") else None

    found: dict[str, Any] = wait_for(listed, "the recharge to be recorded and wait")
    return found


def test_a_rule_can_be_set_read_and_disabled(api: httpx.Client) -> None:
    _account(api, "rr-1")
    put = api.put("/v1/accounts/rr-1/recharge-rule", json=RULE)
    assert put.status_code == 200, put.text
    assert put.json() | {} == {**RULE, "account_id": "rr-1", "fixed_minor": None, "declines_max": 3,
                               "autopay": True, "consecutive_declines": 0, "disabled_reason": None}  # fmt: skip
    assert api.get("/v1/accounts/rr-1/recharge-rule").json() == put.json()
    shown = api.get("/v1/accounts/rr-1").json()["extensions"]["recharge"]
    assert shown == {"rule": put.json(), "open_recharge": None}
    deleted = api.delete("/v1/accounts/rr-1/recharge-rule")
    assert deleted.status_code == 200 and deleted.json()["autopay"] is False
    assert api.delete("/v1/accounts/rr-1/recharge-rule").json()["autopay"] is False  # idempotent
    assert api.get("/v1/accounts/rr-1/recharge-rule").json()["autopay"] is False
    assert api.put("/v1/accounts/rr-1/recharge-rule", json=RULE).json()["autopay"] is True


def test_a_rule_for_a_missing_account_or_without_a_rule_is_not_found(api: httpx.Client) -> None:
    missing = api.put("/v1/accounts/rr-nobody/recharge-rule", json=RULE)
    assert (missing.status_code, missing.json()["code"]) == (404, "account_not_found")
    assert api.get("/v1/accounts/rr-nobody/recharge-rule").status_code == 404
    _account(api, "rr-2")
    none = api.get("/v1/accounts/rr-2/recharge-rule")
    assert (none.status_code, none.json()["code"]) == (404, "no_recharge_rule")
    assert api.delete("/v1/accounts/rr-2/recharge-rule").status_code == 404


@pytest.mark.parametrize(
    "patch",
    [
        {"fixed_minor": 100},  # both a target and a fixed amount
        {"target_minor": None},  # neither
        {"target_minor": 400},  # a target not above the threshold
        {"daily_cap_minor": 0},
        {"threshold_minor": 1.5},
        {"card_id": "card ok"},
        {"declines_max": 0},
        {"surprise": 1},
    ],
)
def test_a_malformed_rule_is_refused_with_a_problem_and_changes_nothing(
    api: httpx.Client, patch: dict[str, Any]
) -> None:
    account_id = f"rr-bad-{abs(hash(json.dumps(patch))) % 10**8}"
    _account(api, account_id)
    body = {k: v for k, v in {**RULE, **patch}.items() if v is not None}
    reply = api.put(f"/v1/accounts/{account_id}/recharge-rule", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    assert api.get(f"/v1/accounts/{account_id}/recharge-rule").status_code == 404


def test_recharges_are_listed_by_account_a_page_at_a_time_and_read_by_id(api: httpx.Client) -> None:
    first = _open_waiting_recharge(api, "rl-1")
    second = _open_waiting_recharge(api, "rl-2")
    assert first["phase"] == "opened" and first["balance_at_open_minor"] == 400
    got = api.get(f"/v1/recharges/{first['id']}").json()
    assert {k: v for k, v in got.items() if k != "updated_at_ms"} == {
        k: v for k, v in first.items() if k != "updated_at_ms"
    }
    seen: list[str] = []
    cursor = None
    for _ in range(100):  # bounded walk, one recharge per page
        params: dict[str, Any] = {"limit": 1} | ({} if cursor is None else {"after": cursor})
        page = api.get("/v1/recharges", params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and {first["id"], second["id"]} <= set(seen)
    open_now = api.get("/v1/accounts/rl-1").json()["extensions"]["recharge"]["open_recharge"]
    assert open_now["id"] == first["id"]
    missing = api.get("/v1/recharges/rc-nothing-here")
    assert (missing.status_code, missing.json()["code"]) == (404, "recharge_not_found")


def test_the_freeze_switch_needs_a_reason_to_go_on_and_says_who_set_it(api: httpx.Client) -> None:
    blank = api.post("/v1/admin/freeze", json={"on": True, "reason": "  "})
    assert blank.status_code == 400
    on = api.post("/v1/admin/freeze", json={"on": True, "reason": "gateway incident"})
    assert on.status_code == 200
    state = api.get("/v1/admin/freeze").json()
    assert state["frozen"] is True and state["reason"] == "gateway incident"
    assert state["actor"].startswith("apikey:")
    assert api.post("/v1/admin/freeze", json={"on": False}).json()["frozen"] is False
    assert api.get("/v1/admin/freeze").json()["frozen"] is False
    assert api.post("/v1/admin/freeze", json={"on": "yes"}).status_code == 400


def test_remediation_is_a_dry_run_unless_apply_is_asked_for(api: httpx.Client) -> None:
    dry = api.post("/v1/admin/remediate", json={})
    assert dry.status_code == 200, dry.text
    assert dry.json()["applied"] is False
    assert api.post("/v1/admin/remediate").json()["applied"] is False
    applied = api.post("/v1/admin/remediate", json={"apply": True})
    assert applied.status_code == 200 and applied.json()["applied"] is True
    again = api.post("/v1/admin/remediate", json={"apply": True}).json()
    assert again["pending_actions"] == 0  # nothing left to do the second time


def test_metrics_show_recharges_by_phase_the_freeze_and_the_gate(api: httpx.Client) -> None:
    _open_waiting_recharge(api, "rm-1")
    text = api.get("/metrics").text
    assert 'tally_recharges_unfinished{phase="opened"}' in text
    assert 'tally_billing_frozen{reason="hold"} 1.0' in text
    assert 'tally_recharge_gate_open{reason="frozen"} 0.0' in text
    assert 'tally_recharge_circuit_open{state="closed"} 0.0' in text
    assert 'tally_recharge_waits_total{reason="frozen"}' in text


def test_a_service_key_may_use_rules_and_recharges_but_not_freeze_or_remediate(
    shared_served: Served,
) -> None:
    key = _service_key(shared_served)
    with shared_served.client(key) as api:
        _account(api, "rs-1")
        assert api.put("/v1/accounts/rs-1/recharge-rule", json=RULE).status_code == 200
        assert api.get("/v1/accounts/rs-1/recharge-rule").status_code == 200
        assert api.get("/v1/recharges", params={"account": "rs-1"}).status_code == 200
        for method, path, body in (
            ("GET", "/v1/admin/freeze", None),
            ("POST", "/v1/admin/freeze", {"on": True, "reason": "no"}),
            ("POST", "/v1/admin/remediate", {}),
            ("POST", "/v1/admin/remediate", {"apply": True}),
        ):
            reply = api.request(method, path, json=body)
            assert (reply.status_code, reply.json()["code"]) == (403, "forbidden"), path
        assert api.delete("/v1/accounts/rs-1/recharge-rule").status_code == 200
