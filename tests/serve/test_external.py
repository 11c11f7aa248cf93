"""``tally serve`` against infrastructure it does not own: a Redis URL and a PostgreSQL ledger.
It initialises them on first start, serves, and leaves the Redis it did not start running."""

from __future__ import annotations

from pathlib import Path

from tally.ledger.sql_ledger import SqlLedger
from tally.ops.cluster import Cluster
from tally.ops.node import RedisNode
from tests.cluster.conftest import sentinel_url, three_dc
from tests.serve.harness import Served
from tests.waiting import wait_for


def test_serve_runs_on_a_given_redis_and_postgresql_ledger(
    tmp_path: Path, redis_node: RedisNode, postgres_ledger_url: str
) -> None:
    args = ["--redis-url", redis_node.url, "--ledger-url", postgres_ledger_url, "--no-gateway"]
    args.append("--skip-preflight")  # the fixture's node has no persistence (a test node)
    served = Served(home=tmp_path / "home", extra_args=args)
    served.start()
    try:
        with served.client() as api:
            assert (
                api.post("/v1/accounts", json={"id": "alice", "currency": "EUR"}).status_code == 201
            )
            credit = {
                "transfer_id": "c1",
                "account_id": "alice",
                "amount_minor": 500,
                "currency": "EUR",
            }
            assert api.post("/v1/credits", json=credit).status_code == 201
            debit = {"transfer_id": "d1", "account_id": "alice", "amount_minor": 200}
            assert api.post("/v1/debits", json=debit).json()["balance_minor"] == 300
            wait_for(lambda: httpx_ready(served), "readiness")
    finally:
        assert served.stop() == 0
    assert redis_node.is_running()  # not ours to stop
    with SqlLedger.open(postgres_ledger_url) as ledger:
        assert ledger.balance_of("alice") == 300  # drained into PostgreSQL before the stop


def test_serve_refuses_a_primary_without_persistence_before_writing_to_it(
    tmp_path: Path, redis_node: RedisNode
) -> None:
    served = Served(
        home=tmp_path / "home", extra_args=["--redis-url", redis_node.url, "--no-gateway"]
    )
    served.start(wait=False)
    assert served.wait_exit() == 2
    assert "TP007" in served.output()
    with redis_node.client() as client:
        assert client.dbsize() == 0


def httpx_ready(served: Served) -> bool:
    import httpx

    return httpx.get(served.url + "/readyz", trust_env=False).status_code == 200


def test_serve_through_sentinel_reports_a_failover_and_keeps_serving(tmp_path: Path) -> None:
    """The engine finds the primary through Sentinel; when Sentinel replaces it, serve logs the
    +switch-master once, counts it in /metrics, and debits go on against the new primary."""
    with Cluster(three_dc(tmp_path / "cluster")) as cluster:
        args = ["--redis-url", sentinel_url(cluster), "--no-gateway"]
        served = Served(home=tmp_path / "home", extra_args=args)
        served.start()
        try:
            with served.client() as api:
                assert (
                    api.post("/v1/accounts", json={"id": "a", "currency": "USD"}).status_code == 201
                )
                credit = {
                    "transfer_id": "c1",
                    "account_id": "a",
                    "amount_minor": 500,
                    "currency": "USD",
                }
                assert api.post("/v1/credits", json=credit).status_code == 201
                cluster.nodes["r1"].kill()
                wait_for(lambda: "+switch-master" in served.output(), "the failover logged")
                debit = {"transfer_id": "d1", "account_id": "a", "amount_minor": 200}
                wait_for(lambda: api.post("/v1/debits", json=debit).status_code == 201, "a debit")
                assert api.post("/v1/debits", json=debit).json()["balance_minor"] == 300
                metrics = api.get("/metrics").text
            assert "tally_sentinel_failovers_total 1.0" in metrics
            assert served.output().count("+switch-master") == 1  # three Sentinels, one failover
        finally:
            assert served.stop() == 0
