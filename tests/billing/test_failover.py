"""F4 with Sentinel: the primary dies, Sentinel promotes a replica, and the engine finds it by
itself (READONLY / broken connection -> rediscover -> one idempotent retry), losing nothing
that replicas had acknowledged."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis

from tally.billing.engine import Engine
from tally.bootstrap import open_deployment, recharging
from tally.config import Settings
from tally.domain.accounts import Account
from tally.domain.recharge import RechargePhase, RechargeRule
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.errors import StoreError, StoreNotEnoughReplicas, StoreReadOnly
from tally.gateway import FakeGateway
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.cluster import Cluster
from tally.ops.node import RedisNode
from tally.service.fast_debit import AsyncDebits
from tally.store.discovery import PrimaryLocator, SwitchMaster
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore
from tally.sync.rebuild import init_store
from tests.waiting import wait_for

from ..cluster.conftest import sentinel_url, three_dc

FAILOVER_DEADLINE_S = 60.0


def test_after_a_primary_crash_the_engine_follows_sentinel_to_the_new_primary(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with Cluster(three_dc(tmp_path / "cluster")) as cluster:
        url = sentinel_url(cluster)
        settings = Settings.resolve(
            redis_url=url, ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}", home=str(tmp_path)
        )
        with SqlLedger.open(settings.ledger_url) as ledger:
            locator = PrimaryLocator(cluster.sentinel_target())
            init_store(locator.client(), KeyLayout(settings.namespace, 4), ledger)
            locator.close()
        with open_deployment(settings) as dep:
            dep.engine.create_account(Account("alice", "USD"))
            dep.engine.credit("top", "alice", 1000, "USD")
            first = dep.engine.debit("d1", "alice", 100)
            assert dep.client.execute_command("WAIT", 2, 5000) == 2  # replicas have it
            seen: list[SwitchMaster] = []
            watch = dep.watch_failovers(seen.append)
            assert watch is not None
            request.addfinalizer(watch.stop)
            cluster.nodes["r1"].kill()
            deadline = time.monotonic() + FAILOVER_DEADLINE_S
            result = None
            while result is None and time.monotonic() < deadline:
                try:
                    result = dep.engine.debit("d2", "alice", 100)
                except StoreError:
                    time.sleep(0.5)  # no primary yet: Sentinel is still electing one
            assert result is not None, "the engine never reached a new primary"
            assert (result.result, result.balance_minor) == (Result.ok, 800)
            replay = dep.engine.debit("d1", "alice", 100)
            assert replay.replayed and replay.balance_minor == first.balance_minor
            assert cluster.primary() is not None and cluster.primary().name != "r1"  # type: ignore[union-attr]
            wait_for(lambda: seen, "+switch-master recorded")
            assert watch.failovers == 1


def test_after_a_failover_a_serve_composition_recharges_exactly_once(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Defect 3: ``serve``'s recharge health probe kept the client it was built with; after
    Sentinel replaced the primary the gate said the store was not primary (or unreachable)
    until a restart, and no recharge was ever charged again."""
    with Cluster(three_dc(tmp_path / "cluster")) as cluster:
        url = sentinel_url(cluster)
        settings = Settings.resolve(
            redis_url=url, ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}", home=str(tmp_path)
        )
        with SqlLedger.open(settings.ledger_url) as ledger:
            locator = PrimaryLocator(cluster.sentinel_target())
            init_store(locator.client(), KeyLayout(settings.namespace, 4), ledger)
            locator.close()
        gateway = FakeGateway()
        request.addfinalizer(gateway.close)
        with open_deployment(settings) as dep:
            machinery = recharging(dep, gateway)  # what `tally serve` builds
            dep.engine.create_account(Account("alice", "USD"))
            dep.engine.credit("top", "alice", 1000, "USD")
            rule = RechargeRule("alice", "card_alice", 500, 100_000, 2, target_minor=2000)
            assert machinery.service.set_rule(rule) is Result.ok
            assert machinery.gate.why_not() is None
            assert dep.client.execute_command("WAIT", 2, 5000) == 2  # replicas have it all
            cluster.nodes["r1"].kill()

            def debit_on_the_new_primary() -> TransferResult | None:
                try:
                    return dep.engine.debit("d1", "alice", 600)
                except StoreError:
                    return None  # no primary yet: Sentinel is still electing one

            debit = wait_for(debit_on_the_new_primary, "a new primary", timeout_s=60)
            assert debit.recharge_id is not None
            wait_for(lambda: machinery.gate.why_not() is None, "the gate to open", timeout_s=30)
            done = machinery.service.notice("alice", 600, debit)
            assert done is not None and done.phase is RechargePhase.succeeded, done
            charges = [r for r in gateway.records() if r.kind == "charge"]
            assert [(c.idempotency_key, c.status) for c in charges] == [
                (debit.recharge_id, "succeeded")
            ]
            state = dep.engine.account("alice")
            assert state is not None and state.balance_minor == 2000


@pytest.mark.parametrize("path", ["sync", "async"])
def test_with_a_plain_url_a_read_only_node_is_reported_not_retried(
    tmp_path: Path, redis_node: RedisNode, path: str
) -> None:
    settings = Settings.resolve(
        redis_url=redis_node.url,
        ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}",
        home=str(tmp_path),
    )
    with SqlLedger.open(settings.ledger_url) as ledger:
        init_store(redis_node.client(), KeyLayout(settings.namespace, 4), ledger)
    with open_deployment(settings) as dep:
        assert dep.watch_failovers(print) is None  # no Sentinel, nothing to watch
        dep.engine.create_account(Account("alice", "USD"))
        redis_node.client().replicaof(redis_node.host, redis_node.port)
        with pytest.raises(StoreReadOnly):
            debit_on(path, dep.engine, "d1", "alice", 1)


def debit_on(path: str, engine: Engine, *args: str | int) -> TransferResult:
    """``Engine.debit``, or the HTTP hot path (async shell + coalescer + the same guard)."""
    if path == "sync":
        return engine.debit(*args)  # type: ignore[arg-type]

    async def once() -> TransferResult:
        debits = AsyncDebits(engine)
        try:
            return await debits.debit(*args)  # type: ignore[arg-type]
        finally:
            await debits.close()

    return asyncio.run(once())


@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("sentinel_names_another", [False, True])
def test_noreplicas_from_a_replaced_primary_follows_sentinel_only_when_it_moved(
    tmp_path: Path, sentinel_names_another: bool, path: str
) -> None:
    """A primary cut off from its replicas answers NOREPLICAS; by the time the partition heals
    the others may have failed over, and it keeps refusing until Sentinel demotes it (up to its
    INFO period). The engine asks Sentinel (``primary_moved``) and follows a new primary; when
    Sentinel still names the same one (control), the error is reported, not retried."""
    old = RedisNode(name="old", dir=tmp_path / "old")
    new = RedisNode(name="new", dir=tmp_path / "new")
    old.start()
    new.start()
    try:
        layout = KeyLayout("tally", 4)
        with SqlLedger.open(f"sqlite:///{tmp_path / 'l.sqlite3'}") as ledger:
            with old.client() as c:
                init_store(c, layout, ledger)
            with new.client() as c:
                c.replicaof(old.host, old.port)
                deadline = time.monotonic() + 20
                while c.info("replication").get("master_link_status") != "up":
                    assert time.monotonic() < deadline, "replica never synced"
                    time.sleep(0.05)
            epoch = ledger.current_epoch()
            assert epoch is not None
            engine_store = RedisStore(
                old.client(),
                layout,
                epoch.epoch_id,
                rediscover=new.client,
                primary_moved=lambda: sentinel_names_another,
            )
            engine = Engine(engine_store, ledger)
            engine.create_account(Account("alice", "USD"))
            engine.credit("top", "alice", 1000, "USD")
            with old.client() as c:
                c.execute_command("WAIT", 1, 5000)
            with new.client() as c:
                c.replicaof("no", "one")  # the others failed over to "new"
            with old.client() as c:
                c.config_set("min-replicas-to-write", "1")  # "old" is cut off: NOREPLICAS
            if sentinel_names_another:
                result = debit_on(path, engine, "d1", "alice", 100)
                assert (result.result, result.balance_minor) == (Result.ok, 900)
                assert engine_store.client.connection_pool.connection_kwargs["port"] == new.port
            else:
                with pytest.raises(StoreNotEnoughReplicas):
                    debit_on(path, engine, "d1", "alice", 100)
            engine_store.client.close()
    finally:
        new.stop()
        old.stop()


def test_concurrent_debits_hit_by_one_failover_reconnect_once_and_all_land(
    tmp_path: Path,
) -> None:
    """Twenty debits in flight on the async path all meet NOREPLICAS from a replaced primary:
    the first reconnects, the others see the store already moved and resend (no herd of
    rediscoveries, each debit applied once)."""
    old = RedisNode(name="old", dir=tmp_path / "old")
    new = RedisNode(name="new", dir=tmp_path / "new")
    old.start()
    new.start()
    try:
        layout = KeyLayout("tally", 4)
        with SqlLedger.open(f"sqlite:///{tmp_path / 'l.sqlite3'}") as ledger:
            with old.client() as c:
                init_store(c, layout, ledger)
            with new.client() as c:
                c.replicaof(old.host, old.port)
                deadline = time.monotonic() + 20
                while c.info("replication").get("master_link_status") != "up":
                    assert time.monotonic() < deadline, "replica never synced"
                    time.sleep(0.05)
            epoch = ledger.current_epoch()
            assert epoch is not None
            reconnects: list[int] = []

            def rediscover() -> redis.Redis:
                reconnects.append(1)
                return new.client()

            store = RedisStore(
                old.client(), layout, epoch.epoch_id, rediscover=rediscover,
                primary_moved=lambda: True,
            )  # fmt: skip
            engine = Engine(store, ledger)
            engine.create_account(Account("alice", "USD"))
            engine.credit("top", "alice", 1000, "USD")
            with old.client() as c:
                c.execute_command("WAIT", 1, 5000)
            with new.client() as c:
                c.replicaof("no", "one")
            with old.client() as c:
                c.config_set("min-replicas-to-write", "1")

            async def all_at_once() -> list[TransferResult]:
                debits = AsyncDebits(engine)
                try:
                    return await asyncio.gather(
                        *(debits.debit(f"d{i}", "alice", 1) for i in range(20))
                    )
                finally:
                    assert debits.recoveries == 1
                    # The failover closed the old primary's async pool (its sockets), once.
                    assert debits.shell is not None and debits.shell.pools_closed == 1
                    assert debits.shell.source is store.client
                    await debits.close()

            results = asyncio.run(all_at_once())
            assert [r.result for r in results] == [Result.ok] * 20
            assert sorted(r.balance_minor for r in results) == list(range(980, 1000))  # type: ignore[type-var]
            assert len(reconnects) == 1, "one rediscovery for the whole herd"
            store.client.close()
    finally:
        new.stop()
        old.stop()
