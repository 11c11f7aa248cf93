"""Durability per shard on a real Redis Cluster (both binaries): ``TALLY_WAIT_REPLICAS=auto`` is
1 on a cluster whose primaries have replicas, ``WAIT`` goes to each primary on the connection
that wrote, and a write its shard's replica did not acknowledge is answered as unknown. Without
that, a shard primary cut off from its replica acknowledges a debit that its failover then
discards: shown here first, on the same cluster, with a store that does not wait."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis

from tally.bootstrap import Deployment, cluster_store, initialise_store, open_deployment
from tally.config import Settings
from tally.domain.accounts import Account, AccountStatus
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.errors import StoreError, StoreOutcomeUnknown
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.binary import RedisBinary
from tally.ops.cluster import Cluster
from tally.ops.cluster.formation import wait_cluster_ok
from tally.store.cluster_store import ClusterStore, _Call, replicas_by_primary, replicated_primaries
from tally.store.keys import KeyLayout
from tests.binaries import BINARIES, binary_id

from .rc_topologies import redis_cluster

FAILOVER_TIMEOUT_S = 60.0
_names = itertools.count()


def _url(cluster: Cluster) -> str:
    nodes = ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes())
    return f"redis+cluster://:{cluster.password}@{nodes}"


def _settings(url: str, tmp_path: Path, ledger_url: str) -> Settings:
    return Settings.resolve(redis_url=url, ledger_url=ledger_url, home=str(tmp_path / "home"))


def _owner_name(dep: Deployment, cluster: Cluster, key: str) -> str:
    node = dep.store.cluster.get_node_from_key(key)  # type: ignore[union-attr]
    return next(n for n, h in cluster.nodes.items() if h.front == (node.host, node.port))


def _shard_dcs(cluster: Cluster, primary: str) -> set[str]:
    """The data centers of ``primary`` and of its replicas (same first letter, ``rc_topologies``)."""
    return {h.dc for n, h in cluster.nodes.items() if n[0] == primary[0]}


def _id_on(dep: Deployment, cluster: Cluster, layout: KeyLayout, primary: str, *, on: bool) -> str:
    """A transfer id whose record shard is (``on``) or is not on ``primary``."""
    for _ in range(10_000):  # bounded: a hit comes within a few names
        tid = f"t-{next(_names)}"
        if (_owner_name(dep, cluster, layout.tx_for(tid)) == primary) is on:
            return tid
    raise AssertionError("no such id")


def _until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, "not within the failover timeout"
        time.sleep(0.2)


def _retry_until_served(
    dep: Deployment, tid: str, account: str, amount: int
) -> tuple[TransferResult, bool]:
    """The debit retried by id while the shard fails over (bounded), and whether an attempt
    was answered as unknown on the way (that attempt may have applied, and then the answer
    that ends the loop is its replay)."""
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    unknown = False
    while True:
        try:
            return dep.engine.debit(tid, account, amount), unknown
        except (StoreError, redis.RedisError) as exc:
            unknown = unknown or isinstance(exc, StoreOutcomeUnknown)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
            dep.store.reconnect()


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_auto_wait_turns_a_debit_a_failover_would_discard_into_unknown(
    binary: RedisBinary, tmp_path: Path, sqlite_ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One shard's primary P cut off from its replica R (the link between their data centers a
    blackhole), then P crashes and R takes over (``CLUSTER FAILOVER TAKEOVER``). A store that
    does not wait (what ``auto`` gave on a cluster URL before: 0) answers a debit on P as ok,
    and after the failover that debit is gone: no record, the balance untouched, an
    acknowledged write lost. (A first version stopped R with SIGSTOP instead: R read the stream
    from its socket on resume and nothing was lost, which the balance assertion caught.)
    The deployment opened with ``auto`` (1: the cluster has replicas) answers the same kind of
    debit as unknown, its id reserved on ANOTHER primary (the three-step path): step 3 must not
    record a final outcome there (seen without that rule: the engine's own retry replayed
    ``ok`` from the id's shard while the new primary never applied the debit); in a batch only
    that shard's debit is unknown; the retry after the failover applies it exactly once."""
    monkeypatch.delenv("TALLY_WAIT_REPLICAS", raising=False)
    topology = redis_cluster(tmp_path / "rc", replicas=1)
    with Cluster(topology, binary=binary) as cluster:
        url = _url(cluster)
        settings = _settings(url, tmp_path, sqlite_ledger_url)
        assert settings.wait_replicas is None  # auto
        layout = KeyLayout(settings.namespace, settings.shards)
        with SqlLedger.open(settings.ledger_url) as ledger:
            initialise_store(settings, layout, ledger)
        with open_deployment(settings) as dep:
            assert dep.store.wait_replicas == 1  # auto on a cluster with replicas
            # and the drainer's fence too (before: 0 on any cluster URL, so the ledger could
            # settle a journal entry only the old primary held, which the failover drops)
            drainer = dep.drainer()  # auto: every replica of each primary, here one
            primaries = replicas_by_primary(dep.store.cluster)  # type: ignore[union-attr]
            assert drainer.per_primary and {drainer.replicas_for(n) for n in primaries} == {1}  # type: ignore[attr-defined]
            assert replicated_primaries(dep.store.cluster) == 3  # type: ignore[union-attr]
            unwaiting = cluster_store(
                url, dataclasses.replace(settings, wait_replicas=0), layout, dep.store.epoch_id
            )
            try:
                # The account on a primary P such that neither P nor its replica R is in the
                # clients' data center: cutting P's data center from R's leaves the test's
                # routes to every node.
                acct = next(
                    a
                    for a in (f"acct-{n}" for n in range(10_000))
                    if topology.client_dc
                    not in _shard_dcs(cluster, _owner_name(dep, cluster, layout.account_key(a)))
                )
                dep.engine.create_account(Account(acct, "EUR", 0, AccountStatus.active))
                funded = dep.engine.credit("fund-wait", acct, 100, "EUR")
                assert (funded.result, funded.balance_minor) == (Result.ok, 100)
                primary = _owner_name(dep, cluster, layout.account_key(acct))
                (replica,) = [n for n in cluster.nodes if n[0] == primary[0] and n != primary]
                lost = _id_on(dep, cluster, layout, primary, on=True)
                unsure = _id_on(dep, cluster, layout, primary, on=False)
                cut = (cluster.nodes[primary].dc, cluster.nodes[replica].dc)
                other = next(  # an account on another primary, and an id in its shard
                    a
                    for a in (f"other-{n}" for n in range(10_000))
                    if _owner_name(dep, cluster, layout.account_key(a)) != primary
                )
                dep.engine.create_account(Account(other, "EUR", 0, AccountStatus.active))
                assert dep.engine.credit("fund-other", other, 100, "EUR").result is Result.ok
                served = next(
                    t
                    for t in (f"served-{n}" for n in range(10_000))
                    if layout.shard_of(t) == layout.shard_of(other)
                )

                # A blackhole: P still counts R as connected (its lag is under
                # min-replicas-max-lag), so P accepts writes that R never receives.
                cluster.partition(*cut, mode="drop")
                try:
                    (answered,) = unwaiting.apply([(lost, "d", acct, 30, "")]).results
                    assert answered == TransferResult(lost, Result.ok, 70, False)
                    with pytest.raises(StoreOutcomeUnknown, match="acknowledged by 0 of 1"):
                        dep.engine.debit(unsure, acct, 20)
                    # Per shard: in one batch, the other primary's debit is decided (partial)
                    # and only the cut-off shard's is unknown.
                    with pytest.raises(StoreOutcomeUnknown) as mixed:
                        dep.store.apply([(unsure, "d", acct, 20, ""), (served, "d", other, 5, "")])
                    assert mixed.value.partial == [  # type: ignore[attr-defined]
                        TransferResult(served, Result.ok, 95, False)
                    ]
                    cluster.nodes[primary].kill()
                    # taken over while still cut off: the held stream never reaches R
                    cluster.nodes[replica].client().execute_command(
                        "CLUSTER", "FAILOVER", "TAKEOVER"
                    )
                    _until(lambda: cluster.nodes[replica].live_role() == "master")
                finally:
                    cluster.heal(*cut)
                # P comes back as R's replica (its own copy of the debits is replaced by R's).
                # Until then R has no replica and every write on it is unknown, as it should be.
                cluster.nodes[primary].start()
                wait_cluster_ok(cluster)
                assert cluster.nodes[primary].live_role() == "slave"
                # "slave" comes before its sync ends; until then WAIT on R answers 0 and a
                # retry is unknown (CI saw the retry applied, unknown, then replayed).
                cluster.wait_replicas_in_sync()

                retried, after_unknown = _retry_until_served(dep, unsure, acct, 20)
                assert retried == TransferResult(unsure, Result.ok, 80, after_unknown)
                # The acknowledged debit is gone with P: no record and the balance without it.
                client = dep.store.cluster  # type: ignore[union-attr]
                assert client.hget(layout.tx_for(lost), lost) is None
                assert dep.engine.debit(unsure, acct, 20) == retried._replace(replayed=True)
                assert dep.engine.accounts([acct])[acct].balance_minor == 80  # type: ignore[union-attr]
            finally:
                unwaiting.close()


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_auto_wait_is_zero_on_a_cluster_without_replicas(
    binary: RedisBinary, tmp_path: Path, sqlite_ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No replica anywhere: nothing to fail over to and a WAIT would only time out, so ``auto``
    is 0 and debits are answered (seen failing with auto fixed at 1: every debit unknown);
    an explicit TALLY_WAIT_REPLICAS wins over auto either way."""
    monkeypatch.delenv("TALLY_WAIT_REPLICAS", raising=False)
    topology = redis_cluster(tmp_path / "rc", replicas=0, min_replicas_to_write=0)
    with Cluster(topology, binary=binary) as cluster:
        settings = _settings(_url(cluster), tmp_path, sqlite_ledger_url)
        layout = KeyLayout(settings.namespace, settings.shards)
        with SqlLedger.open(settings.ledger_url) as ledger:
            initialise_store(settings, layout, ledger)
        with open_deployment(settings) as dep:
            assert dep.store.wait_replicas == 0
            drainer = dep.drainer()  # a fence there would never pass
            primaries = replicas_by_primary(dep.store.cluster)  # type: ignore[union-attr]
            assert {drainer.replicas_for(n) for n in primaries} == {0}  # type: ignore[attr-defined]
            dep.engine.create_account(Account("acct-0", "EUR", 0, AccountStatus.active))
            credit = dep.engine.credit("fund-0", "acct-0", 10, "EUR")
            assert (credit.result, credit.balance_minor) == (Result.ok, 10)
        monkeypatch.setenv("TALLY_WAIT_REPLICAS", "1")
        explicit = _settings(_url(cluster), tmp_path, sqlite_ledger_url)
        with open_deployment(explicit) as dep:
            assert dep.store.wait_replicas == 1


def test_auto_on_a_cluster_url_follows_its_replicas_and_a_number_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule alone: auto is 1 with replicas, 0 without; TALLY_WAIT_REPLICAS=N is N (the
    drainer's automatic fence reads each primary's replicas: test_drain_fence_cluster.py)."""
    monkeypatch.delenv("TALLY_WAIT_REPLICAS", raising=False)
    monkeypatch.delenv("TALLY_DRAIN_REPLICAS", raising=False)
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    auto = Settings.resolve(redis_url=url, home=str(tmp_path))
    assert auto.wait_replicas_on_cluster(replicated=True) == 1
    assert auto.wait_replicas_on_cluster(replicated=False) == 0
    monkeypatch.setenv("TALLY_WAIT_REPLICAS", "2")
    explicit = Settings.resolve(redis_url=url, home=str(tmp_path))
    assert explicit.wait_replicas_on_cluster(replicated=False) == 2
    monkeypatch.setenv("TALLY_WAIT_REPLICAS", "0")
    zero = Settings.resolve(redis_url=url, home=str(tmp_path))
    assert zero.wait_replicas_on_cluster(replicated=True) == 0


class _Conn:
    """A connection that answers the first script call, then breaks (before WAIT answers)."""

    def __init__(self, replies: list[object]) -> None:
        self.replies = replies
        self.sent: list[tuple[object, ...]] = []

    def send_command(self, *args: object) -> None:
        self.sent.append(args)

    def read_response(self) -> object:
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def disconnect(self) -> None:
        pass


class _Pool:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def get_connection(self) -> _Conn:
        return self.conn

    def release(self, conn: _Conn) -> None:
        pass


def test_a_connection_lost_before_wait_answered_acknowledges_none_of_the_replies_read() -> None:
    """Two calls pipelined to one primary, the first answered, then the connection breaks: the
    first call applied but no WAIT answered for it, so it counts as acknowledged by 0 replicas
    (unknown), the second is unknown already. Seen failing with the acknowledgement left None
    (as if no WAIT had been asked for): the first call's answer would count as decided. (The
    code before this change gave 0 too, through a length test that was always true after the
    padding; the condition is now stated plainly and this test pins it.)"""
    conn = _Conn([[b"K"], redis.ConnectionError("reset by peer")])
    node = SimpleNamespace(name="n", redis_connection=SimpleNamespace(connection_pool=_Pool(conn)))
    layout = KeyLayout("tally", 16)
    store = ClusterStore(cast(Any, None), layout, "e1", wait_replicas=1)
    try:
        calls = [_Call("transfer", [layout.epoch(0)], []), _Call("transfer", [layout.epoch(0)], [])]
        replies, acked = store._pipeline(cast(Any, node), calls, asking=False, wait=True)
    finally:
        store.close(client=False)
    assert replies[0] == [b"K"] and isinstance(replies[1], StoreOutcomeUnknown)
    assert acked == 0
    assert [c[0] for c in conn.sent] == ["EVALSHA", "EVALSHA"]  # WAIT was never sent
