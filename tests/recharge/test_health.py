"""The store health probe behind the recharge gate, on a real redis-server."""

from __future__ import annotations

from tally.billing.recharge import HealthBounds, RedisHealth
from tally.bootstrap import Deployment
from tally.gateway import FakeGateway

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
