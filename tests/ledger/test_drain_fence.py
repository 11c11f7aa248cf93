"""The drainer's replica fence (invariants 3 and 9): the ledger settles only journal entries that
a replica holds, so promoting that replica cannot leave the ledger ahead of the store.

Real processes only: a primary, a replica whose replication link runs through the fault proxy,
and a partition of that link (``drop``: the primary's bytes are held, never delivered). Not
SIGSTOP: a stopped replica's kernel still takes the bytes into its socket buffer, and on SIGCONT
it processes them before anything else, so a replica promoted after SIGCONT has every write
(seen on 7.0.15 and 6.2.14) and the failure this guards against would not show.

A failover is done by hand: SIGKILL the primary, ``REPLICAOF NO ONE`` on the replica, and a
deployment opened on it (what Sentinel and the engine's rediscovery do, without the wait).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.connection import ConnectionInterface
from redis.retry import Retry

from tally.bootstrap import Deployment, open_deployment
from tally.config import Settings, parse_drain_replicas
from tally.domain.accounts import Account, SystemAccount
from tally.domain.limits import DRAIN_REPLICAS_MAX
from tally.domain.results import Result
from tally.errors import ConfigError
from tally.ops.faultproxy import LinkSpec, ProxyHub
from tally.ops.node import RedisNode, orphan_pids
from tally.sync.drainer import Drainer
from tally.sync.reconcile import reconcile

LINK = "primary-replica"
START_MINOR = 10_000
DEBIT_MINOR = 100
DEBITS = 5
CREDIT_MINOR = 2_500
FENCE_TIMEOUT_MS = 100
ROUNDS_MAX = 200
CATCH_UP_S = 10.0


@dataclass
class Replica:
    node: RedisNode
    hub: ProxyHub

    def partition(self) -> None:
        """The primary's writes stop reaching the replica (held in the proxy), acks too."""
        self.hub.set_fault(LINK, "both", "partition", mode="drop")

    def heal(self) -> None:
        self.hub.clear(LINK)

    def promote(self, primary: RedisNode) -> None:
        """The primary crashes; this replica becomes the primary with what it has."""
        primary.kill()
        with closing(self.node.client()) as client:
            client.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]


def wait_replicated(primary: RedisNode) -> None:
    """Until the replica acknowledged a write made now (bounded)."""
    with closing(primary.client()) as client:
        for _ in range(20):
            client.publish("test:sync", "")
            if client.execute_command("WAIT", 1, 500) == 1:  # type: ignore[no-untyped-call]
                return
    raise AssertionError("the replica never caught up")


@pytest.fixture
def replica(tmp_path: Path, redis_node: RedisNode, dep: Deployment) -> Iterator[Replica]:
    """A replica of ``redis_node`` (holding ``dep``'s initialised store), linked via a proxy."""
    with closing(redis_node.client()) as client:  # 7.0 syncs diskless after 5 s by default
        client.config_set("repl-diskless-sync-delay", 0)
    with ProxyHub([LinkSpec(LINK, "127.0.0.1", redis_node.port)]) as hub:
        host, port = hub.address(LINK)
        node = RedisNode(
            "replica", tmp_path / "replica", directives={"replicaof": f"{host} {port}"}
        )
        node.start()
        try:
            wait_replicated(redis_node)
            yield Replica(node, hub)
        finally:
            node.stop()
            assert orphan_pids(str(tmp_path / "replica")) == [], "replica left running"


def open_business(dep: Deployment, primary: RedisNode) -> None:
    """Two funded accounts, drained, and replicated including the drainer's XACK and trim:
    the state both sides agree on."""
    eng = dep.engine
    for account_id in ("alice", "bob"):
        assert eng.create_account(Account(account_id, "USD")) is Result.ok
        top = eng.credit(f"top-{account_id}", account_id, START_MINOR, "USD")
        assert top.result is Result.ok
    drain(dep.drainer(replicas=1, fence_timeout_ms=1000), lambda: not pending(dep))
    wait_replicated(primary)


def business_during_partition(dep: Deployment) -> None:
    """Debits on alice and a card top-up for bob, each acknowledged by the primary alone."""
    for i in range(DEBITS):
        assert dep.engine.debit(f"use-{i}", "alice", DEBIT_MINOR).result is Result.ok
    late = dep.engine.credit("late-topup", "bob", CREDIT_MINOR, "USD", SystemAccount.card_clearing)
    assert (late.result, late.balance_minor) == (Result.ok, START_MINOR + CREDIT_MINOR)


def pending(dep: Deployment) -> int:
    """Journal entries not yet settled, plus credit intents the journal has not settled."""
    entries = sum(int(dep.client.xlen(k)) for k in dep.layout.journals())
    return entries + dep.ledger.count_unsettled_credit_intents()


def drain(drainer: Drainer, done: Callable[[], bool], timeout_s: float = CATCH_UP_S) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(ROUNDS_MAX):
        drainer.run_once()
        if done():
            return
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"not drained: {drainer.stats}")


def store_balance(dep: Deployment, account_id: str) -> int:
    state = dep.engine.account(account_id)
    assert state is not None
    return state.balance_minor


@dataclass
class AfterFailover:
    dep: Deployment
    credits_reapplied: int
    drift: dict[str, int]  # account -> redis - ledger, from reconcile


def fail_over(dep: Deployment, primary: RedisNode, replica: Replica) -> AfterFailover:
    """Promote the replica, then do what the service does on the new primary: re-apply the
    credits the ledger has not settled, keep serving (one more debit per account moves every
    shard's journal past whatever the old primary had), drain, and reconcile."""
    replica.promote(primary)
    promoted = open_deployment(dataclasses.replace(dep.settings, redis_url=replica.node.url))
    try:
        reapplied = promoted.engine.apply_pending_credits(older_than_ms=0)
        for account_id in ("alice", "bob"):
            assert promoted.engine.debit(f"after-{account_id}", account_id, 1).result is Result.ok
        # The promoted node stands alone here: nothing to fence against.
        drain(promoted.drainer(replicas=0), lambda: not pending(promoted))
        report = reconcile(promoted.client, promoted.layout, promoted.ledger)
    except BaseException:
        promoted.close()
        raise
    return AfterFailover(promoted, reapplied, {d.account: d.diff_minor for d in report.drift})


# -- the control: without the fence ----------------------------------------------------------
def test_without_the_fence_a_failover_leaves_the_ledger_ahead_of_the_promoted_store(
    dep: Deployment, redis_node: RedisNode, replica: Replica
) -> None:
    open_business(dep, redis_node)
    replica.partition()
    business_during_partition(dep)
    drainer = dep.drainer(replicas=0)
    drain(drainer, lambda: not pending(dep))
    assert drainer.stats.fenced == 0
    assert dep.ledger.count_unsettled_credit_intents() == 0  # the top-up counts as settled
    assert dep.ledger.balance_of("bob") == START_MINOR + CREDIT_MINOR

    after = fail_over(dep, redis_node, replica)
    with after.dep:
        assert after.credits_reapplied == 0  # settled, so never re-applied: the top-up is lost
        assert store_balance(after.dep, "bob") == START_MINOR - 1
        assert after.dep.ledger.balance_of("bob") == START_MINOR + CREDIT_MINOR - 1
        # Redis - ledger: alice kept the debits the ledger booked, bob lacks his top-up.
        assert after.drift == {"alice": DEBITS * DEBIT_MINOR, "bob": -CREDIT_MINOR}


# -- with the fence ----------------------------------------------------------------------------
def test_the_fenced_drainer_settles_nothing_a_replica_lacks_and_everything_once_it_has_it(
    dep: Deployment, redis_node: RedisNode, replica: Replica
) -> None:
    open_business(dep, redis_node)
    transfers_before = dep.ledger.count_transfers()
    replica.partition()
    business_during_partition(dep)
    drainer = dep.drainer(replicas=1, fence_timeout_ms=FENCE_TIMEOUT_MS)
    for _ in range(3):
        assert drainer.run_once() == 0
    assert drainer.stats.fenced == 3 and drainer.stats.last_fence_acked == 0
    assert drainer.stats.entries == drainer.stats.errors == 0
    assert dep.ledger.count_transfers() == transfers_before
    assert dep.ledger.count_unsettled_credit_intents() == 1  # the top-up still waits

    replica.heal()
    drain(drainer, lambda: not pending(dep))
    assert dep.ledger.count_transfers() == transfers_before + DEBITS + 1
    assert dep.ledger.balance_of("bob") == START_MINOR + CREDIT_MINOR

    after = fail_over(dep, redis_node, replica)
    with after.dep:
        assert after.credits_reapplied == 0  # nothing was pending: the replica had it all
        assert after.drift == {}
        for account_id in ("alice", "bob"):
            assert store_balance(after.dep, account_id) == after.dep.ledger.balance_of(account_id)


def test_with_the_fence_a_failover_during_the_partition_loses_no_acknowledged_credit(
    dep: Deployment, redis_node: RedisNode, replica: Replica
) -> None:
    open_business(dep, redis_node)
    replica.partition()
    business_during_partition(dep)
    drainer = dep.drainer(replicas=1, fence_timeout_ms=FENCE_TIMEOUT_MS)
    assert drainer.run_once() == 0 and drainer.stats.fenced == 1

    after = fail_over(dep, redis_node, replica)  # the partition never heals
    with after.dep:
        assert after.credits_reapplied == 1  # unsettled in the ledger, so applied again
        assert after.drift == {}
        assert store_balance(after.dep, "bob") == START_MINOR + CREDIT_MINOR - 1
        # The debits only the isolated primary had are gone from both sides alike (invariant
        # 9 bounds and counts those; the ledger never booked them).
        assert store_balance(after.dep, "alice") == START_MINOR - 1
        assert after.dep.ledger.balance_of("alice") == START_MINOR - 1
        assert after.dep.ledger.count_unsettled_credit_intents() == 0


class FreshConnectionPool(redis.ConnectionPool):
    """Every command on a new server connection (each release disconnects): the worst case of
    a pool shared with other threads, where a command need not get the connection that did the
    reads. RESP2 and no CLIENT SETINFO, so a connection that wrote nothing has WAIT offset 0
    (a RESP3 HELLO, and CLIENT SETINFO on 6.2, were seen to give it one)."""

    def release(self, connection: ConnectionInterface) -> None:
        connection.disconnect()  # type: ignore[no-untyped-call]
        super().release(connection)  # type: ignore[arg-type]  # the stubs disagree with themselves


def test_the_fence_holds_whichever_pooled_connection_the_reads_went_over(
    dep: Deployment, redis_node: RedisNode, replica: Replica
) -> None:
    """WAIT waits for the calling connection's own last propagated write. Over a connection
    that propagated nothing it passed at once, with the replica cut off (the control: a WAIT
    without the PUBLISH fails this test)."""
    open_business(dep, redis_node)
    replica.partition()
    business_during_partition(dep)
    pool = FreshConnectionPool(
        host=redis_node.host,
        port=redis_node.port,
        protocol=2,
        driver_info=None,
        socket_timeout=5.0,
        retry=Retry(NoBackoff(), 0),
    )
    with closing(redis.Redis(connection_pool=pool)) as client:
        drainer = Drainer(
            client, dep.layout, dep.ledger, replicas=1, fence_timeout_ms=FENCE_TIMEOUT_MS
        )
        assert drainer.run_once() == 0
        assert drainer.stats.fenced == 1 and drainer.stats.last_fence_acked == 0
    assert dep.ledger.count_unsettled_credit_intents() == 1


def test_a_restarted_drainer_rereading_its_pending_entries_still_waits_for_the_replica(
    dep: Deployment, redis_node: RedisNode, replica: Replica
) -> None:
    """The restart path: the first read is the consumer's own pending entries, on a new
    connection. (On 7.0.15 and 6.2.14 that XREADGROUP was seen to propagate, so this holds
    even without the fence's PUBLISH; it guards the path, the test above guards the PUBLISH.)"""
    open_business(dep, redis_node)
    replica.partition()
    business_during_partition(dep)
    first = dep.drainer(replicas=1, fence_timeout_ms=FENCE_TIMEOUT_MS)
    assert first.run_once() == 0  # read (now pending under drainer-1), fenced, then "crashed"
    with closing(redis_node.client(protocol=2)) as fresh:
        again = Drainer(
            fresh, dep.layout, dep.ledger, replicas=1, fence_timeout_ms=FENCE_TIMEOUT_MS
        )
        assert again.run_once() == 0
        assert again.stats.fenced == 1 and again.stats.last_fence_acked == 0
    assert dep.ledger.count_unsettled_credit_intents() == 1
    replica.heal()
    drain(first, lambda: not pending(dep))  # the same consumer: its pending entries, now
    assert dep.ledger.count_unsettled_credit_intents() == 0


# -- the setting ------------------------------------------------------------------------------
def settings(redis_url: str | None, **values: object) -> Settings:
    return Settings(home=Path("h"), redis_url=redis_url, ledger_url="sqlite://", **values)  # type: ignore[arg-type]


def test_drain_replicas_is_automatic_one_with_sentinel_and_zero_for_a_single_node() -> None:
    assert settings("redis://127.0.0.1:6390/0").drain_replicas_effective == 0
    assert settings(None).drain_replicas_effective == 0
    assert settings("sentinel://127.0.0.1:26379/tally").drain_replicas_effective == 1
    assert settings("sentinel://h:1/m", drain_replicas=0).drain_replicas_effective == 0
    assert settings("redis://h:1/0", drain_replicas=2).drain_replicas_effective == 2


def test_drain_replicas_comes_from_the_environment_as_a_number_or_auto(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def resolved(text: str | None) -> int | None:
        if text is None:
            monkeypatch.delenv("TALLY_DRAIN_REPLICAS", raising=False)
        else:
            monkeypatch.setenv("TALLY_DRAIN_REPLICAS", text)
        return Settings.resolve(redis_url="redis://h:1/0", home=str(tmp_path)).drain_replicas

    assert resolved(None) is None
    assert resolved("auto") is None
    assert resolved(" AUTO ") is None
    assert resolved("0") == 0
    assert resolved("2") == 2
    assert parse_drain_replicas("") is None


def test_drain_workers_come_from_the_environment_into_the_deployments_drainer(
    monkeypatch: pytest.MonkeyPatch, dep: Deployment
) -> None:
    """``TALLY_DRAIN_WORKERS`` (what ``tally bench drain --drain-workers 2`` measured) reaches
    the drainer every deployment builds; not a whole number, or out of range: a ConfigError
    naming the variable."""
    monkeypatch.delenv("TALLY_DRAIN_WORKERS", raising=False)
    assert Settings.resolve(redis_url="redis://h:1/0", home="h").drain_workers == 2  # default
    monkeypatch.setenv("TALLY_DRAIN_WORKERS", "3")
    three = Settings.resolve(redis_url="redis://h:1/0", home="h")
    assert three.drain_workers == 3
    assert Deployment.drainer(dataclasses.replace(dep, settings=three)).workers == 3
    for bad in ("two", "-1", "0", "9"):
        monkeypatch.setenv("TALLY_DRAIN_WORKERS", bad)
        with pytest.raises(ConfigError, match="TALLY_DRAIN_WORKERS"):
            Settings.resolve(redis_url="redis://h:1/0", home="h")


@pytest.mark.parametrize("text", ["-1", "1.5", "sixteen", "²", ""])
def test_shards_that_are_not_a_whole_number_are_a_config_error(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen before this test: TALLY_SHARDS="²" passed ``isdigit`` and crashed in ``int()``."""
    monkeypatch.setenv("TALLY_SHARDS", text)
    with pytest.raises(ConfigError, match="TALLY_SHARDS must be a whole number"):
        Settings.resolve(redis_url="redis://h:1/0", home="h")


@pytest.mark.parametrize("text", ["-1", "1.5", "one", "²", "yes"])
def test_a_drain_replicas_that_is_not_a_whole_number_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="TALLY_DRAIN_REPLICAS"):
        parse_drain_replicas(text)


@pytest.mark.parametrize(
    "values",
    [
        {"drain_replicas": -1},
        {"drain_replicas": DRAIN_REPLICAS_MAX + 1},
        {"drain_replicas": True},
        {"drain_fence_timeout_ms": 0},
        {"drain_fence_timeout_ms": 2000},  # not below the 2000 ms socket timeout
        {"drain_fence_timeout_ms": 600, "redis_socket_timeout_ms": 500, "wait_timeout_ms": 100},
        {"drain_workers": 0},
        {"drain_workers": 9},
    ],
)
def test_bad_drain_settings_are_config_errors(values: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="drain_"):
        settings("redis://h:1/0", **values)


def test_a_drainer_refuses_a_fence_its_socket_timeout_cannot_wait_for(
    redis_node: RedisNode, dep: Deployment
) -> None:
    with closing(redis_node.client(socket_timeout=0.2)) as client:
        with pytest.raises(ConfigError, match="socket timeout"):
            Drainer(client, dep.layout, dep.ledger, replicas=1, fence_timeout_ms=500)
        Drainer(client, dep.layout, dep.ledger, replicas=0, fence_timeout_ms=500)  # no fence
    for bad in ({"replicas": -1}, {"replicas": DRAIN_REPLICAS_MAX + 1}, {"fence_timeout_ms": 0}):
        with pytest.raises(ConfigError):
            dep.drainer(**bad)
