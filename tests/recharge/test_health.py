"""The store health probe behind the recharge gate, on a real redis-server."""

from __future__ import annotations

import time
from pathlib import Path

from tally.billing.recharge import HealthBounds, RedisHealth
from tally.bootstrap import Deployment
from tally.gateway import FakeGateway
from tally.ops.node import RedisNode
from tests.waiting import wait_for

from .conftest import complete_all, open_customer, wire
from .test_incident_classes import make_read_only, make_writable


def test_the_probe_names_each_reason_the_store_is_not_fit_for_recharging(dep: Deployment) -> None:
    probe = RedisHealth(dep.client, dep.layout, dep.ledger)
    assert probe.check().healthy
    tight = RedisHealth(dep.client, dep.layout, dep.ledger, HealthBounds(journal_backlog_max=1))
    dep.client.xadd(dep.layout.journal(0), {"e": "x", "d": ""})
    dep.client.xadd(dep.layout.journal(1), {"e": "x", "d": ""})
    assert tight.check().reasons[0].startswith("drain_lag")
    make_read_only(dep)
    try:
        assert probe.check().reasons[0].startswith("store_not_primary")
    finally:
        make_writable(dep)
    dep.client.delete(dep.layout.epoch(2))
    assert probe.check().reasons[0].startswith("store_epoch_invalid")


def test_an_open_recharge_waits_without_charging_while_the_store_is_read_only(
    dep: Deployment, fake_gateway: FakeGateway
) -> None:
    r = wire(dep, fake_gateway)
    open_customer(r, dep)
    opened = dep.engine.debit("u1", "acme", 600)
    r.service.notice("acme", 600, opened, drive=False)
    make_read_only(dep)
    try:
        for _ in range(3):
            r.completer.run_once(10)
    finally:
        make_writable(dep)
    assert fake_gateway.records() == []
    assert r.completer.stats.waiting["store_not_primary"] == 3
    assert r.saga.metrics.waits["store_not_primary"] == 3
    complete_all(r)
    assert len(fake_gateway.records()) == 1


def test_replica_lag_closes_the_gate_only_when_every_replica_fell_silent(
    dep: Deployment, tmp_path: Path
) -> None:
    """Two real replicas of the deployment's primary. One stopped (a long full sync, a dead
    link): still healthy, the other is current. Both stopped (the primary is cut off and may be
    replaced by a failover): ``replica_lag``, so no card is charged against it."""
    primary = dep.client.connection_pool.connection_kwargs
    replicas = [RedisNode(name=f"rep{i}", dir=tmp_path / f"rep{i}") for i in (1, 2)]
    probe = RedisHealth(dep.client, dep.layout, dep.ledger, HealthBounds(replica_lag_s_max=1))
    try:
        for node in replicas:
            node.directives["replicaof"] = f"{primary['host']} {primary['port']}"
            node.directives["masterauth"] = str(primary.get("password") or "")
            node.start()
        wait_for(lambda: int(dep.client.info("replication")["connected_slaves"]) == 2, "2 replicas")
        assert probe.check().healthy
        replicas[0].pause()
        time.sleep(3.5)  # no ACK for > 2 s from the stopped one
        assert probe.check().healthy, probe.check().reasons  # the other is current
        replicas[1].pause()
        wait_for(
            lambda: any(r.startswith("replica_lag") for r in probe.check().reasons), "replica_lag"
        )
    finally:
        for node in replicas:
            node.resume()
            node.stop()
