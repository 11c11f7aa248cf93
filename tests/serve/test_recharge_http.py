"""Auto-recharge end to end through HTTP against a real ``tally serve``: the drainer records the
recharge a debit opened, the completer drives it, the embedded gateway simulator charges the card
once (its own records say so) and the balance is credited once, also when the store was read-only
or lost while the recharge was open."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tally.gateway.client import SimulatorAdmin
from tally.ops.node import free_port
from tests.serve.harness import Served
from tests.waiting import wait_for

RULE = {
    "card_id": "card_ok",
    "threshold_minor": 500,
    "target_minor": 2000,
    "daily_cap_minor": 100_000,
}
QUIET_S = 1.5  # several completer rounds: long enough for a repeated charge to show


def _account(api: httpx.Client, account_id: str, funds_minor: int) -> None:
    assert api.post("/v1/accounts", json={"id": account_id, "currency": "USD"}).status_code == 201
    credit = {
        "transfer_id": f"fund-{account_id}",
        "account_id": account_id,
        "amount_minor": funds_minor,
        "currency": "USD",
    }
    assert api.post("/v1/credits", json=credit).status_code == 201
    rule = api.put(f"/v1/accounts/{account_id}/recharge-rule", json=RULE)
    assert rule.status_code == 200, rule.text


def _charges(served: Served, account_id: str) -> list[Any]:
    with SimulatorAdmin(served.gateway_url()) as admin:
        return [
            r
            for r in admin.records()
            if r.kind == "charge" and r.metadata.get("account") == account_id
        ]


def _recharges(api: httpx.Client, account_id: str) -> list[dict[str, Any]]:
    reply = api.get("/v1/recharges", params={"account": account_id})
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def _finished(api: httpx.Client, account_id: str) -> dict[str, Any] | None:
    items = _recharges(api, account_id)
    return items[0] if len(items) == 1 and items[0]["finished"] else None


def _waiting_for(api: httpx.Client, account_id: str, reason: str) -> bool:
    items = _recharges(api, account_id)
    return len(items) == 1 and reason in (items[0]["wait_reason"] or "")


def _credits(api: httpx.Client, account_id: str) -> list[dict[str, Any]]:
    wait_for(lambda: api.post("/v1/admin/drain").status_code == 200, "a drain")
    items = api.get(f"/v1/accounts/{account_id}/transfers").json()["items"]
    return [t for t in items if t["kind"] == "credit" and not t["id"].startswith("fund-")]


def _assert_paid_once(served: Served, api: httpx.Client, account_id: str) -> None:
    done = wait_for(lambda: _finished(api, account_id), "the recharge to finish")
    assert done["phase"] == "succeeded" and done["amount_minor"] == 1600
    time.sleep(QUIET_S)
    charges = _charges(served, account_id)
    assert [(c.idempotency_key, c.amount_minor, c.status) for c in charges] == [
        (done["id"], 1600, "succeeded")
    ]
    assert api.get(f"/v1/accounts/{account_id}").json()["balance_minor"] == 2000
    assert [(c["id"], c["amount_minor"]) for c in _credits(api, account_id)] == [(done["id"], 1600)]


def test_a_debit_below_the_threshold_charges_the_card_once_and_credits_the_balance_once(
    shared_served: Served,
) -> None:
    with shared_served.client() as api:
        _account(api, "rc-plain", 1000)
        debit = api.post(
            "/v1/debits",
            json={"transfer_id": "rc-plain-d1", "account_id": "rc-plain", "amount_minor": 600},
        )
        assert debit.status_code == 201 and debit.json()["balance_minor"] == 400
        _assert_paid_once(shared_served, api, "rc-plain")
        state = api.get("/v1/accounts/rc-plain").json()["extensions"]["recharge"]
        assert state["open_recharge"] is None and state["rule"]["autopay"] is True


def _open_while_frozen(served: Served, api: httpx.Client, account_id: str) -> None:
    assert (
        api.post(
            "/v1/admin/freeze", json={"on": True, "reason": "test: hold recharges"}
        ).status_code
        == 200
    )
    debit = {"transfer_id": f"{account_id}-d1", "account_id": account_id, "amount_minor": 600}
    assert api.post("/v1/debits", json=debit).status_code == 201
    wait_for(lambda: _waiting_for(api, account_id, "frozen"), "the recharge to wait on the freeze")


def test_a_recharge_waits_while_the_store_is_read_only_and_charges_once_after(
    served: Served,
) -> None:
    with served.client() as api:
        _account(api, "rc-ro", 1000)
        _open_while_frozen(served, api, "rc-ro")
        with served.redis() as store:
            store.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # nobody there
            try:
                assert api.post("/v1/admin/freeze", json={"on": False}).status_code == 200
                wait_for(
                    lambda: _waiting_for(api, "rc-ro", "store_not_primary"),
                    "the recharge to wait on the store",
                )
                time.sleep(QUIET_S)
                assert _charges(served, "rc-ro") == []
                assert _recharges(api, "rc-ro")[0]["phase"] == "opened"
            finally:
                store.execute_command("REPLICAOF", "NO", "ONE")
        _assert_paid_once(served, api, "rc-ro")


def test_a_recharge_waits_while_the_store_is_lost_and_charges_once_after_the_rebuild(
    served: Served,
) -> None:
    with served.client() as api:
        _account(api, "rc-lost", 1000)
        _open_while_frozen(served, api, "rc-lost")
        with served.redis() as store:
            store.flushall()  # the 2013 restart: an empty dataset
        assert api.post("/v1/admin/freeze", json={"on": False}).status_code == 200
        wait_for(
            lambda: _waiting_for(api, "rc-lost", "store_epoch_invalid"),
            "the recharge to wait on the store",
        )
        time.sleep(QUIET_S)
        assert _charges(served, "rc-lost") == []
        rebuilt = api.post("/v1/admin/rebuild", json={})
        assert rebuilt.status_code == 200, rebuilt.text
        _assert_paid_once(served, api, "rc-lost")
