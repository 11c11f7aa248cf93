"""On a Redis Cluster with two replicas per shard the drainer's automatic fence waits for both
(each primary's replicas in the node table), not one. With one, a journal entry that only the
primary and one replica hold is settled in the ledger, and a failover that promotes the other
replica (cut off from the primary) drops it from the store: the ledger ahead of Redis (the
Sentinel case: chaos seed 3, tests/cluster/test_drain_fence_sentinel.py).

Real processes: nine redis-server cluster nodes, three shards, each primary's replicas in the
two other data centers, every link through the fault proxy; the clients are in dc1. Cutting dc2
from dc3 leaves s2's primary (b2, dc2) with one replica following (b1, dc1) of its two. Before
``ClusterDrainer.per_primary`` the automatic fence was 1 on a replicated cluster and the first
round settled the debits b3 lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tally.bootstrap import initialise_store, open_deployment
from tally.config import Settings
from tally.domain.accounts import Account
from tally.domain.results import Result
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.cluster import Cluster
from tally.service.workers import DrainService
from tally.store.keys import KeyLayout
from tests.cluster.rc_topologies import redis_cluster
from tests.waiting import wait_for

DEBITS = 4


def test_the_automatic_fence_waits_for_every_replica_of_the_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TALLY_DRAIN_REPLICAS", raising=False)
    monkeypatch.delenv("TALLY_WAIT_REPLICAS", raising=False)
    with Cluster(redis_cluster(tmp_path / "rc", replicas=2)) as cluster:
        nodes = ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes())
        settings = Settings.resolve(
            redis_url=f"redis+cluster://:{cluster.password}@{nodes}",
            ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
            home=str(tmp_path / "home"),
        )
        layout = KeyLayout(settings.namespace, settings.shards)
        with SqlLedger.open(settings.ledger_url) as ledger:
            initialise_store(settings, layout, ledger)
        with open_deployment(settings) as dep:
            cluster_client = dep.store.cluster  # type: ignore[union-attr]
            b2 = cluster.nodes["b2"].front
            acct = next(  # an account whose shard is on s2's primary, b2
                a
                for a in (f"acct-{n}" for n in range(10_000))
                if (
                    (node := cluster_client.get_node_from_key(layout.account_key(a))).host,
                    node.port,
                )
                == b2
            )
            engine = dep.engine
            assert engine.create_account(Account(acct, "USD")) is Result.ok
            assert engine.credit(f"top-{acct}", acct, 1_000, "USD").result is Result.ok
            service = DrainService(dep)
            wait_for(lambda: service.drain_all() >= 0 and dep.ledger.balance_of(acct) == 1_000,
                     "the top-up settled while every replica follows")  # fmt: skip

            cluster.partition("dc2", "dc3")  # b3 stops hearing b2; b1 still follows it
            for i in range(DEBITS):  # acknowledged: b1 holds each (WAIT 1 per shard)
                assert engine.debit(f"use-{i}-{acct}", acct, 10).result is Result.ok
            assert service.run_once() == 0
            assert service.drainer.stats.fenced == 1
            assert dep.ledger.balance_of(acct) == 1_000  # nothing b3 lacks is settled

            cluster.heal("dc2", "dc3")
            wait_for(lambda: service.drain_all() >= 0 and dep.ledger.balance_of(acct) == 960,
                     "the debits settled once b3 holds them too", timeout_s=30)  # fmt: skip
