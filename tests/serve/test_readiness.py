"""Readiness follows the store: it flips when the primary hangs, dies or is wiped, and comes back
when the primary is back (AOF) or after a rebuild from the ledger."""

from __future__ import annotations

import os
import shutil
import signal

import httpx

from tests.serve.harness import Served
from tests.waiting import wait_for


def _ready(served: Served) -> httpx.Response:
    return httpx.get(served.url + "/readyz", timeout=30, trust_env=False)


def _reason_becomes(served: Served, reason: str | None) -> bool:
    reply = _ready(served)
    return reply.json()["reason"] == reason and (reply.status_code == 200) == (reason is None)


def _fund(api: httpx.Client, account: str, amount_minor: int) -> None:
    assert api.post("/v1/accounts", json={"id": account, "currency": "USD"}).status_code == 201
    credit = {
        "transfer_id": f"fund-{account}",
        "account_id": account,
        "amount_minor": amount_minor,
        "currency": "USD",
    }
    assert api.post("/v1/credits", json=credit).status_code == 201


def test_readiness_flips_when_the_primary_hangs_or_dies_and_returns_when_it_is_back(
    served: Served,
) -> None:
    with served.client() as api:
        _fund(api, "alice", 1000)
        debit = {"transfer_id": "d1", "account_id": "alice", "amount_minor": 100}
        first = api.post("/v1/debits", json=debit)
        assert first.status_code == 201
        assert _ready(served).status_code == 200
        pid = int(served.local_state()["pid"])
        os.kill(pid, signal.SIGSTOP)  # a hung primary
        try:
            wait_for(
                lambda: _reason_becomes(served, "store_unavailable"),
                "readiness to say store_unavailable",
            )
            refused = api.post("/v1/debits", json={**debit, "transfer_id": "d2"})
            assert refused.status_code == 503
            assert refused.headers["Retry-After"]
        finally:
            os.kill(pid, signal.SIGKILL)  # then it dies; the service restarts it from its AOF
            os.kill(pid, signal.SIGCONT)
        # The new node answers (readiness returns) a moment before serve records its pid.
        wait_for(lambda: int(served.local_state()["pid"]) != pid, "the supervisor to restart it")
        wait_for(lambda: _reason_becomes(served, None), "readiness to return after the restart")
        assert api.post("/v1/debits", json=debit).json() == first.json()  # the replay survived
        assert api.get("/v1/accounts/alice").json()["balance_minor"] == 900
    assert served.stop() == 0
    assert "drained=" in served.output() and "final drain incomplete" not in served.output()


def test_a_wiped_primary_is_store_lost_until_a_rebuild_restores_it_from_the_ledger(
    served: Served,
) -> None:
    with served.client() as api:
        _fund(api, "bob", 1000)
        debit = {"transfer_id": "d1", "account_id": "bob", "amount_minor": 250}
        first = api.post("/v1/debits", json=debit)
        wait_for(
            lambda: _ready(served).json()["checks"]["drain"]["values"]["entries"] == 0, "the drain"
        )
        with served.redis() as store:
            store.flushall()  # the 2013 restart: an empty dataset
        wait_for(lambda: _reason_becomes(served, "store_lost"), "readiness to say store_lost")
        lost = api.post("/v1/debits", json={**debit, "transfer_id": "d2"})
        assert (lost.status_code, lost.json()["code"]) == (503, "store_lost")
        assert api.post("/v1/debits", json={**debit, "transfer_id": "d2"}).status_code == 503
        rebuilt = api.post("/v1/admin/rebuild", json={})
        assert rebuilt.status_code == 200, rebuilt.text
        wait_for(lambda: _reason_becomes(served, None), "readiness after the rebuild")
        assert api.get("/v1/accounts/bob").json()["balance_minor"] == 750
        assert (
            api.post("/v1/debits", json=debit).json() == first.json()
        )  # replays survive a rebuild


def test_a_primary_that_restarts_empty_never_takes_a_write_and_a_rebuild_heals_it(
    served: Served,
) -> None:
    with served.client() as api:
        _fund(api, "carol", 500)
        wait_for(
            lambda: _ready(served).json()["checks"]["drain"]["values"]["entries"] == 0, "the drain"
        )
        pid = int(served.local_state()["pid"])
        os.kill(pid, signal.SIGSTOP)
        for name in ("appendonlydir", "appendonly.aof", "dump.rdb"):  # its persistence is gone
            path = served.home / "redis" / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(
                missing_ok=True
            )
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)
        wait_for(lambda: _reason_becomes(served, "store_lost"), "readiness to say store_lost")
        refused = api.post(
            "/v1/debits", json={"transfer_id": "d1", "account_id": "carol", "amount_minor": 1}
        )
        assert refused.json()["code"] == "store_lost"
        assert api.post("/v1/admin/rebuild").status_code == 200
        wait_for(lambda: _reason_becomes(served, None), "readiness after the rebuild")
        assert api.get("/v1/accounts/carol").json()["balance_minor"] == 500
