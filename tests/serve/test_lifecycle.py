"""``tally serve`` start and stop: first start initialises and prints a key, a restart keeps the
data, SIGTERM/SIGINT drain the journal and leave no process behind, a lost store is refused."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from tally.ledger.sql_ledger import SqlLedger
from tally.ops.node import free_port, orphan_pids
from tests.serve.harness import Served, gateway_pids

DEBITS = 40


def _load(served: Served) -> None:
    with served.client() as api:
        assert api.post("/v1/accounts", json={"id": "alice", "currency": "USD"}).status_code == 201
        fund = {
            "transfer_id": "fund",
            "account_id": "alice",
            "amount_minor": 10_000,
            "currency": "USD",
        }
        assert api.post("/v1/credits", json=fund).status_code == 201
        batch = [
            {"transfer_id": f"d{i}", "account_id": "alice", "amount_minor": 10}
            for i in range(DEBITS)
        ]
        assert api.post("/v1/debits/batch", json={"debits": batch}).json()["ok"] == DEBITS


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_the_journal_into_the_ledger_and_leaves_no_process(
    tmp_path: Path, sig: int
) -> None:
    served = Served(home=tmp_path / "home")
    served.start()
    try:
        _load(served)
    finally:
        code = served.stop(sig)
    assert code == 0, served.output()
    assert orphan_pids(str(tmp_path)) == []
    assert gateway_pids(str(tmp_path)) == []
    assert not (served.home / "local.json").exists()
    with SqlLedger.open(f"sqlite:///{served.home / 'ledger.sqlite3'}") as ledger:
        assert ledger.count_transfers() == DEBITS + 1  # everything drained before the stop
        assert ledger.balance_of("alice") == 10_000 - 10 * DEBITS
        assert ledger.count_unsettled_credit_intents() == 0


def test_a_restart_keeps_the_data_and_prints_no_new_key(tmp_path: Path) -> None:
    served = Served(home=tmp_path / "home")
    served.start()
    try:
        assert served.admin_key and served.admin_key.startswith("tk_")
        assert "initialised a new deployment" in served.output()
        # Judged as what it is, one primary with no replica, on every binary: no finding (its
        # backlog is sized like hardened; no min-replicas-to-write since no replica exists).
        assert "preflight" not in served.output()
        _load(served)
    finally:
        assert served.stop() == 0
    key = served.admin_key
    served.log_path.unlink()
    served.start()
    try:
        assert served.admin_key is None  # shown once, on the first start only
        assert "initialised" not in served.output()
        with served.client(key) as api:
            assert api.get("/v1/accounts/alice").json()["balance_minor"] == 10_000 - 10 * DEBITS
            replay = api.post(
                "/v1/debits", json={"transfer_id": "d0", "account_id": "alice", "amount_minor": 10}
            )
            assert replay.headers["Idempotent-Replayed"] == "true"
    finally:
        assert served.stop() == 0
    assert orphan_pids(str(tmp_path)) == []


def test_an_empty_store_under_an_existing_ledger_is_refused_until_rebuilt(tmp_path: Path) -> None:
    served = Served(home=tmp_path / "home")
    served.start()
    try:
        _load(served)
    finally:
        assert served.stop() == 0
    key = served.admin_key
    for path in (served.home / "redis").iterdir():  # the store's persistence is lost
        if path.name != "redis.conf":
            if path.is_dir():
                for inner in path.iterdir():
                    inner.unlink()
                path.rmdir()
            else:
                path.unlink()
    served.log_path.unlink()
    served.start(wait=False)
    assert served.wait_exit() == 2
    assert "tally rebuild" in served.output()
    assert orphan_pids(str(tmp_path)) == [] and gateway_pids(str(tmp_path)) == []
    served.extra_args = ["--rebuild"]
    served.start()
    try:
        assert "rebuilt from the ledger" in served.output()
        with served.client(key) as api:
            assert api.get("/v1/accounts/alice").json()["balance_minor"] == 10_000 - 10 * DEBITS
    finally:
        assert served.stop() == 0
    assert orphan_pids(str(tmp_path)) == []


def test_a_foreign_store_is_refused_without_writing_to_it(tmp_path: Path) -> None:
    import redis as redis_lib

    from tally.ops.node import RedisNode

    node = RedisNode(name="foreign", dir=tmp_path / "foreign")
    node.start()
    try:
        with node.client() as other:
            other.set("someone:else", "data")
        served = Served(
            home=tmp_path / "home", extra_args=["--redis-url", node.url, "--no-gateway"]
        )
        served.start(wait=False)
        assert served.wait_exit() == 2
        assert "foreign" in served.output()
        with node.client() as other:
            assert other.dbsize() == 1
            assert other.get("someone:else") == b"data"
    except redis_lib.RedisError:
        raise
    finally:
        node.stop()


def test_a_port_in_use_is_a_clear_error_and_leaves_no_process(tmp_path: Path) -> None:
    """Before: a traceback ending in OSError (exit 1) after the start-up had run (a new
    deployment created, its admin key printed). Now said first, before anything is created."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        served = Served(home=tmp_path / "home", port=holder.getsockname()[1])
        served.start(wait=False)
        assert served.wait_exit() == 2
    out = served.output()
    assert f"cannot listen on 127.0.0.1:{served.port}" in out and "--port" in out
    assert "Traceback" not in out
    assert "admin API key" not in out and "redis-server" not in out
    assert not (tmp_path / "home" / "ledger.sqlite3").exists()
    assert orphan_pids(str(tmp_path)) == [] and gateway_pids(str(tmp_path)) == []
