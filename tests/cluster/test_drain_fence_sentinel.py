"""The drainer's automatic fence with Sentinel waits for EVERY replica the Sentinels know, not
one (invariants 3 and 9). Found by `tally lab chaos --seed 3` under load (CI, 2026-12-04; again
by hand with the machine busy): dc1 was cut from dc2 and dc3, Sentinel (dc2, dc3) promoted r3,
and after the heal r2 still followed r1 for seconds; r1, with r2 acknowledging, took debits
and the drainer's fence of one replica passed, so the ledger settled 30 debits that r3's
promotion then discarded (nine balances above the ledger). With the fence at every known
replica, an entry r3 lacks is not settled; the promotion discards it from the store and the
ledger alike.

Real processes: three redis-servers and three Sentinels, the replication links through the
fault proxy; r3 (dc3) is cut from r1 (dc1) while r2 (dc2) follows it, as in that run. Without
``Settings.drain_replicas_on_sentinel`` (the automatic fence was 1) the first round settles the
debits r3 does not hold and the test fails."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tally.bootstrap import initialise_store, open_deployment
from tally.config import Settings
from tally.domain.accounts import Account
from tally.domain.results import Result
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.cluster import Cluster
from tally.ops.topology import Topology
from tally.service.workers import DrainService
from tally.store.keys import KeyLayout
from tests.cluster.conftest import sentinel_url
from tests.waiting import wait_for

DEBITS = 5


def test_the_automatic_fence_settles_nothing_a_known_replica_lacks(
    topology_factory: Callable[..., Topology], tmp_path: Path
) -> None:
    with Cluster(topology_factory()) as cluster:
        settings = Settings.resolve(
            redis_url=sentinel_url(cluster),
            ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
            home=str(tmp_path / "home"),
        )
        with SqlLedger.open(settings.ledger_url) as ledger:
            initialise_store(settings, KeyLayout(settings.namespace, settings.shards), ledger)
        with open_deployment(settings) as dep:
            service = DrainService(dep)
            engine = dep.engine
            assert engine.create_account(Account("alice", "USD")) is Result.ok
            assert engine.credit("top-alice", "alice", 1_000, "USD").result is Result.ok
            wait_for(lambda: service.drain_all() >= 1 and dep.ledger.balance_of("alice") == 1_000,
                     "the top-up settled while every replica follows")  # fmt: skip

            cluster.partition("dc1", "dc3")  # r3 stops hearing r1; r2 still follows it
            for i in range(DEBITS):  # acknowledged: r2 holds each (WAIT 1)
                assert engine.debit(f"use-{i}", "alice", 10).result is Result.ok
            assert service.run_once() == 0
            assert (service.drainer.stats.fenced, service.drainer.stats.last_fence_acked) == (
                1,
                1,
            )
            assert dep.ledger.balance_of("alice") == 1_000  # nothing r3 lacks is settled

            cluster.heal("dc1", "dc3")
            cluster.wait_replicas_in_sync(timeout_s=30)
            wait_for(lambda: service.drain_all() and dep.ledger.balance_of("alice") == 950,
                     "the debits settled once r3 holds them too", timeout_s=30)  # fmt: skip
            assert service.drainer.stats.last_fence_acked == 2
            assert service.drainer.replicas == 2  # r2 and r3, as the Sentinels report them
