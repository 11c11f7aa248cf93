"""The balance store on a real Redis Cluster (3 primaries with replicas, both binaries): a
transfer whose id and account live in different slots goes reserve -> apply -> finalize, each
idempotent; a crash between the steps completes exactly once; one shard's failure is that
shard's problem only."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from tally.bootstrap import initialise_store, open_deployment
from tally.config import Settings
from tally.domain.accounts import Account, AccountStatus
from tally.domain.holds import HoldCode, HoldStatus
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.errors import (
    ConfigError,
    StoreLost,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from tally.ledger.sql_epochs import AlreadyInitialised
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.binary import RedisBinary
from tally.ops.cluster import Cluster
from tally.ops.cluster.formation import wait_cluster_ok
from tally.store.cluster_store import ClusterStore, stamp_shard_epochs
from tally.store.discovery import ClusterTarget, cluster_client, parse_target
from tally.store.keys import KeyLayout
from tally.sync.cluster_drain import ClusterDrainer
from tally.sync.reconcile import reconcile
from tests.binaries import BINARIES, binary_id

from .rc_topologies import redis_cluster

EPOCH = "e1"
TALLY_CLI = "from tally.cli.main import main; main()"
FAILOVER_TIMEOUT_S = 60.0
LAYOUT = KeyLayout("tally", 16)
_names = itertools.count()


@dataclass
class Rig:
    cluster: Cluster
    rc: RedisCluster
    store: ClusterStore

    def owner(self, shard: int) -> tuple[str, int]:
        node = self.rc.get_node_from_key(LAYOUT.epoch(shard))
        return (node.host, node.port)

    def name_of(self, address: tuple[str, int]) -> str:
        return next(n for n, h in self.cluster.nodes.items() if h.front == address)


@pytest.fixture(scope="module", params=BINARIES, ids=binary_id)
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    binary: RedisBinary = request.param
    topology = redis_cluster(tmp_path_factory.mktemp("rc"), replicas=2)
    with Cluster(topology, binary=binary) as cluster:
        target = ClusterTarget(tuple(cluster.startup_nodes()), password=cluster.password)
        client = cluster_client(target, socket_timeout_s=5.0)
        _stamp(client)
        store = ClusterStore(client, LAYOUT, EPOCH, wait_replicas=1, wait_timeout_ms=5000)
        store.load_scripts()
        try:
            yield Rig(cluster, client, store)
        finally:
            store.close()


def _stamp(client: RedisCluster) -> None:
    """Stamp every shard; a freshly formed cluster on a loaded 2-core machine may still flap
    (node timeout 2 s): bounded retries while it says CLUSTERDOWN."""
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while True:
        try:
            stamp_shard_epochs(client, LAYOUT, EPOCH)
            return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _account(
    rig: Rig,
    *,
    not_with: frozenset[tuple[str, int]] | set[tuple[str, int]] = frozenset(),
    balance: int = 0,
) -> str:
    """A new account, active, EUR, on a primary other than those in ``not_with``."""
    for _ in range(10_000):  # bounded: a hit comes within a few names
        aid = f"acct-{next(_names)}"
        if rig.owner(LAYOUT.shard_of(aid)) not in not_with:
            break
    rig.store.upsert_account(Account(aid, "EUR", 0, AccountStatus.active))
    if balance:
        (r,) = rig.store.apply([(f"fund-{aid}", "c", aid, balance, "")]).results
        assert r.result is Result.ok
    return aid


def _id(
    rig: Rig, account: str, *, same_shard: bool = False, on: tuple[str, int] | None = None
) -> str:
    """A transfer id whose shard is on another primary than ``account``'s (or the same shard)."""
    acct_shard = LAYOUT.shard_of(account)
    for _ in range(10_000):
        tid = f"t-{next(_names)}"
        shard = LAYOUT.shard_of(tid)
        if same_shard:
            if shard == acct_shard:
                return tid
        elif on is not None:
            if rig.owner(shard) == on:
                return tid
        elif rig.owner(shard) != rig.owner(acct_shard):
            return tid
    raise AssertionError("no such id")


def _record(rig: Rig, tid: str) -> bytes | None:
    return rig.rc.hget(LAYOUT.tx_for(tid), tid)  # type: ignore[return-value]


def _lines(rig: Rig, shard: int, tid: str) -> int:
    entries = rig.rc.xrange(LAYOUT.journal(shard))
    return sum(
        1
        for _, fields in entries
        for line in fields[b"d"].decode().split("\n")
        if line.split("|")[0] == tid
    )


def _balance(rig: Rig, aid: str) -> int:
    state = rig.store.read_accounts([aid])[aid]
    assert state is not None
    return state.balance_minor


def test_the_cluster_url_parses_and_bad_ones_are_refused() -> None:
    """The ``redis+cluster://`` target: addresses and password; a path or a bad address is a
    ConfigError, never a guess."""
    target = parse_target("redis+cluster://:s%40cret@10.0.0.1:7000,10.0.0.2:7001")
    assert target == ClusterTarget((("10.0.0.1", 7000), ("10.0.0.2", 7001)), "s@cret")
    for bad in (
        "redis+cluster://",
        "redis+cluster://h:7000/0",
        "redis+cluster://h:x",
        "redis+cluster://h:70000",
    ):
        with pytest.raises(ConfigError):
            parse_target(bad)


def test_no_reachable_cluster_node_is_store_unavailable_not_a_redis_py_exception() -> None:
    """redis-py raises ``RedisClusterException`` (not a ``RedisError``) when no startup node
    answers: the adapter reports tally's ``StoreUnavailable``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(StoreUnavailable):
            cluster_client(ClusterTarget((("127.0.0.1", port),)), connect_timeout_s=0.5)


def test_cross_slot_credit_debit_replays_whole_first_outcome_and_conflicts(rig: Rig) -> None:
    """Id shard != account shard: applied once in the account's shard (one journal line there,
    none in the id's shard), the id's shard holds the final record; a replay answers the whole
    first outcome; each parameter changed is its conflict and moves nothing."""
    acct = _account(rig)
    credit, debit = _id(rig, acct), _id(rig, acct)
    assert LAYOUT.shard_of(credit) != LAYOUT.shard_of(acct)
    first = rig.store.apply([(credit, "c", acct, 100, ""), (debit, "d", acct, 30, "EUR")]).results
    assert first == [
        TransferResult(credit, Result.ok, 100, False),
        TransferResult(debit, Result.ok, 70, False),
    ]
    again = rig.store.apply([(credit, "c", acct, 100, ""), (debit, "d", acct, 30, "EUR")]).results
    assert again == [r._replace(replayed=True) for r in first]
    assert _record(rig, debit) == f"d|{acct}|30|EUR|0|70".encode()
    assert _record(rig, credit) == f"c|{acct}|100||0|100".encode()
    conflicts = rig.store.apply(
        [
            (debit, "d", acct, 31, "EUR"),
            (debit, "c", acct, 30, "EUR"),
            (debit, "d", acct, 30, "USD"),
            (credit, "c", acct, 100, "USD"),  # recorded '': the account's shard answers
        ]
    ).results
    assert [r.result for r in conflicts] == [
        Result.exists_with_different_amount,
        Result.exists_with_different_kind,
        Result.exists_with_different_currency,
        Result.exists_with_different_currency,
    ]
    assert all(r.replayed and r.balance_minor is None for r in conflicts)
    assert _balance(rig, acct) == 70
    for tid in (credit, debit):
        assert _lines(rig, LAYOUT.shard_of(acct), tid) == 1
        assert _lines(rig, LAYOUT.shard_of(tid), tid) == 0


def test_same_shard_transfers_are_one_call_and_mix_with_cross_ones(rig: Rig) -> None:
    """Id shard == account shard takes the single path; a batch mixing both answers in order."""
    acct = _account(rig, balance=50)
    same, cross = _id(rig, acct, same_shard=True), _id(rig, acct)
    results = rig.store.apply(
        [(cross, "d", acct, 20, ""), (same, "d", acct, 40, ""), (f"{same}x", "c", acct, 1, "")]
    ).results
    assert results == [
        TransferResult(cross, Result.ok, 30, False),
        TransferResult(same, Result.insufficient_funds, 30, False),
        TransferResult(f"{same}x", Result.ok, 31, False),
    ]
    assert _record(rig, same) == f"d|{acct}|40|EUR|7|30".encode()


def test_a_duplicate_id_on_another_account_in_another_slot_is_a_conflict(rig: Rig) -> None:
    """Ids are unique deployment-wide: the same id on an account in another slot (another
    primary) is refused, both after the first completed and on the single path's side."""
    a = _account(rig, balance=100)
    b = _account(rig, not_with={rig.owner(LAYOUT.shard_of(a))}, balance=100)
    tid = _id(rig, a)
    (first,) = rig.store.apply([(tid, "d", a, 10, "")]).results
    assert first.result is Result.ok
    (dup,) = rig.store.apply([(tid, "d", b, 10, "")]).results
    assert (dup.result, dup.replayed) == (Result.exists_with_different_account, True)
    assert (_balance(rig, a), _balance(rig, b)) == (90, 100)
    # An id whose shard is b's: the single path meets the cross path's record and refuses.
    tid2 = _id(rig, b, same_shard=True)
    assert LAYOUT.shard_of(tid2) != LAYOUT.shard_of(a)
    (first2,) = rig.store.apply([(tid2, "d", a, 5, "")]).results
    assert first2.result is Result.ok
    (dup2,) = rig.store.apply([(tid2, "d", b, 5, "")]).results
    assert dup2.result is Result.exists_with_different_account
    assert (_balance(rig, a), _balance(rig, b)) == (85, 100)


def test_a_crash_between_reserve_and_apply_completes_exactly_once(rig: Rig) -> None:
    """Only step 1 ran (a crash): the id is pending; a retry applies once and finalizes; a
    duplicate on another account meanwhile is a conflict, also on the single path (the pending
    record parses as a record of another account there), and moves nothing."""
    a = _account(rig, balance=100)
    b = _account(rig, balance=100)
    tid = _id(rig, a)
    transfers = [(tid, "d", a, 25, "")]
    go, _ = rig.store._reserve(transfers, [0], [None], [None])
    assert go == {0}
    assert _record(rig, tid) == f"d|{a}|25||99|".encode()
    (dup,) = rig.store.apply([(tid, "d", b, 25, "")]).results
    assert dup.result is Result.exists_with_different_account
    same_as_id = _account(rig)
    while LAYOUT.shard_of(same_as_id) != LAYOUT.shard_of(tid):  # bounded by 16 shards' odds
        same_as_id = _account(rig)
    (dup_single,) = rig.store.apply([(tid, "c", same_as_id, 25, "")]).results
    assert dup_single.result is Result.exists_with_different_kind
    (retry,) = rig.store.apply(transfers).results
    assert retry == TransferResult(tid, Result.ok, 75, False)
    (again,) = rig.store.apply(transfers).results
    assert again == retry._replace(replayed=True)
    assert _record(rig, tid) == f"d|{a}|25||0|75".encode()
    assert _balance(rig, a) == 75 and _balance(rig, b) == 100
    assert _lines(rig, LAYOUT.shard_of(a), tid) == 1


def test_a_crash_between_apply_and_finalize_replays_and_finalizes(rig: Rig) -> None:
    """Steps 1 and 2 ran, not 3: the retry replays step 2 (the first outcome, no second
    journal line, no second debit) and finalizes."""
    a = _account(rig, balance=100)
    tid = _id(rig, a)
    finalize = rig.store._finalize
    rig.store._finalize = lambda *args: None  # type: ignore[method-assign]
    try:
        (first,) = rig.store.apply([(tid, "d", a, 40, "")]).results
    finally:
        rig.store._finalize = finalize  # type: ignore[method-assign]
    assert first == TransferResult(tid, Result.ok, 60, False)
    assert _record(rig, tid) == f"d|{a}|40||99|".encode()
    (retry,) = rig.store.apply([(tid, "d", a, 40, "")]).results
    assert retry == first._replace(replayed=True)
    assert _record(rig, tid) == f"d|{a}|40||0|60".encode()
    assert _balance(rig, a) == 60
    assert _lines(rig, LAYOUT.shard_of(a), tid) == 1


def test_a_pending_reservation_with_other_parameters_is_a_conflict(rig: Rig) -> None:
    """A pending id retried with another amount is refused (it may have applied with the first:
    never guessed), and nothing moves."""
    a = _account(rig, balance=100)
    tid = _id(rig, a)
    rig.store._reserve([(tid, "d", a, 10, "")], [0], [None], [None])
    (other,) = rig.store.apply([(tid, "d", a, 11, "")]).results
    assert (other.result, other.replayed) == (Result.exists_with_different_amount, True)
    assert _balance(rig, a) == 100


def test_a_stale_slot_map_is_followed_through_moved_and_a_repeated_id_replays(rig: Rig) -> None:
    """The client believes another primary owns the shards' slots: that node answers MOVED
    (it ran nothing), the store refreshes the map and runs the calls on the owner, once; a
    batch repeating an id answers the repeat as a replay of the first, applied once."""
    a = _account(rig, balance=100)
    tid = _id(rig, a)
    nodes = rig.rc.nodes_manager
    wrong = next(
        n for n in rig.rc.get_primaries() if (n.host, n.port) != rig.owner(LAYOUT.shard_of(a))
    )
    nodes.slots_cache[rig.rc.keyslot(LAYOUT.account_key(a))] = [wrong]
    results = rig.store.apply([(tid, "d", a, 10, ""), (tid, "d", a, 10, "")]).results
    assert results == [
        TransferResult(tid, Result.ok, 90, False),
        TransferResult(tid, Result.ok, 90, True),
    ]
    assert rig.rc.get_node_from_key(LAYOUT.account_key(a)).name != wrong.name  # refreshed
    assert _balance(rig, a) == 90
    assert _lines(rig, LAYOUT.shard_of(a), tid) == 1


def test_holds_work_with_the_hold_id_on_another_primary_than_its_account(rig: Rig) -> None:
    """Holds on a cluster: the id's route in the hold id's shard, the hold beside the balance
    (each call one slot); a debit sees the available balance; a capture books the debit; the
    same hold id on another account is a conflict."""
    a = _account(rig, balance=100)
    other = _account(rig, balance=100)
    hid = _id(rig, a)
    placed = rig.store.place_hold(hid, a, 60, 60_000)
    assert (placed.code, placed.status, placed.held_minor) == (HoldCode.ok, HoldStatus.open, 60)
    assert rig.store.place_hold(hid, other, 60, 60_000).code is HoldCode.hold_id_conflict
    (refused,) = rig.store.apply([(_id(rig, a), "d", a, 50, "")]).results
    assert refused.result is Result.insufficient_funds  # 100 - 60 held
    captured = rig.store.capture_hold(hid, 60)
    assert (captured.code, captured.status) == (HoldCode.ok, HoldStatus.captured)
    assert rig.store.get_hold(hid).status is HoldStatus.captured
    state = rig.store.read_accounts([a])[a]
    assert state is not None and state.balance_minor == 40
    assert rig.store.get_hold(f"{hid}-none").code is HoldCode.hold_not_found
    assert rig.store.sweep_holds() == 0


def test_wait_counts_each_primarys_own_replicas_on_the_connection_that_wrote(rig: Rig) -> None:
    """``WAIT`` per primary, on the connection that sent the writes: with one primary's replicas
    stopped, a batch touching it is held by no replica (a WAIT on another connection would count
    them at once) and is answered as unknown, while a batch on the other primaries reports its
    replicas; the retry, once the replicas are back, replays the first outcome."""
    a = _account(rig, balance=10)
    a_owner = rig.owner(LAYOUT.shard_of(a))
    b = _account(rig, not_with={a_owner}, balance=10)
    store = ClusterStore(rig.rc, LAYOUT, EPOCH, wait_replicas=1, wait_timeout_ms=300)
    try:
        same_a, same_b = _id(rig, a, same_shard=True), _id(rig, b, same_shard=True)
        assert rig.owner(LAYOUT.shard_of(same_b)) != a_owner
        primary = rig.name_of(a_owner)
        replicas = [n for n in rig.cluster.nodes if n[0] == primary[0] and n != primary]
        assert replicas
        for name in replicas:
            rig.cluster.nodes[name].pause()
        try:
            with pytest.raises(StoreOutcomeUnknown, match="acknowledged by 0 of 1"):
                store.apply([(same_a, "d", a, 1, "")])
            served = store.apply([(same_b, "d", b, 1, "")])
        finally:
            for name in replicas:
                rig.cluster.nodes[name].resume()
        assert served.replicas_acked is not None and served.replicas_acked >= 1
        retried = store.apply([(same_a, "d", a, 1, "")])
        (first,) = retried.results
        assert (first.result, first.balance_minor, first.replayed) == (Result.ok, 9, True)
        assert retried.replicas_acked is not None and retried.replicas_acked >= 1
    finally:
        store.close(client=False)  # the rig's client is shared


def test_a_killed_shard_primary_stops_only_its_shard_and_writes_resume_after_failover(
    rig: Rig,
) -> None:
    """Kill one primary: its accounts (and ids reserved there) get unavailable/unknown, never a
    guess; the other primaries keep serving; after the failover the same ids are retried and
    apply exactly once."""
    victim = rig.owner(0)
    victim_name = rig.name_of(victim)
    on_victim = _account(rig)
    while rig.owner(LAYOUT.shard_of(on_victim)) != victim:
        on_victim = _account(rig)
    on_victim_tid = _id(rig, on_victim)
    elsewhere = _account(rig, not_with={victim}, balance=100)
    id_on_victim = _id(rig, elsewhere, on=victim)
    rig.store.apply([(f"c-{on_victim}", "c", on_victim, 100, "")])
    rig.cluster.nodes[victim_name].kill()
    try:
        with pytest.raises((StoreUnavailable, StoreOutcomeUnknown)):
            rig.store.apply([(on_victim_tid, "d", on_victim, 10, "")])
        with pytest.raises(StoreUnavailable):  # its id cannot be reserved: not applied
            rig.store.apply([(id_on_victim, "d", elsewhere, 10, "")])
        assert _balance(rig, elsewhere) == 100
        served = _id(rig, elsewhere)
        while rig.owner(LAYOUT.shard_of(served)) == victim:
            served = _id(rig, elsewhere)
        (ok,) = rig.store.apply([(served, "d", elsewhere, 5, "")]).results
        assert ok == TransferResult(served, Result.ok, 95, False)
        deadline = time.monotonic() + FAILOVER_TIMEOUT_S
        results = None
        while results is None:
            try:
                results = rig.store.apply(
                    [
                        (on_victim_tid, "d", on_victim, 10, ""),
                        (id_on_victim, "d", elsewhere, 10, ""),
                    ]
                ).results
            except (StoreUnavailable, StoreOutcomeUnknown, redis.RedisError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
                with contextlib.suppress(StoreUnavailable):
                    rig.store.reconnect()
            except Exception as exc:  # NOREPLICAS while the other replica follows: retry
                if time.monotonic() > deadline:
                    raise
                assert "replica" in str(exc).lower() or "down" in str(exc).lower(), exc
                time.sleep(0.3)
        assert [r.result for r in results] == [Result.ok, Result.ok]
        assert _balance(rig, on_victim) == 90 and _balance(rig, elsewhere) == 85
        assert rig.owner(0) != victim
    finally:
        rig.cluster.nodes[victim_name].start()
        wait_cluster_ok(rig.cluster)


def test_a_shard_primary_restarted_empty_refuses_its_accounts_while_others_serve(
    rig: Rig,
) -> None:
    """The 2013 defect on one shard (its primary's data gone, simulated by FLUSHALL there):
    every shard it serves answers store_lost, for its accounts and for ids reserved there;
    the other primaries' shards keep serving."""
    a = _account(rig, balance=100)
    lost_owner = rig.owner(LAYOUT.shard_of(a))
    b = _account(rig, not_with={lost_owner}, balance=100)
    tid_on_b = _id(rig, b)
    while rig.owner(LAYOUT.shard_of(tid_on_b)) == lost_owner:
        tid_on_b = _id(rig, b)
    node = rig.cluster.nodes[rig.name_of(lost_owner)]
    node.client().flushall()
    with pytest.raises(StoreLost):
        rig.store.apply([(_id(rig, a), "d", a, 1, "")])
    with pytest.raises(StoreLost):
        rig.store.read_accounts([a])
    with pytest.raises(StoreLost):  # an id whose shard is the lost one: never reserved blind
        rig.store.apply([(_id(rig, b, on=lost_owner), "d", b, 1, "")])
    (ok,) = rig.store.apply([(tid_on_b, "d", b, 1, "")]).results
    assert ok == TransferResult(tid_on_b, Result.ok, 99, False)
    lost = [s for s in range(LAYOUT.shards) if rig.owner(s) == lost_owner]
    stamp_shard_epochs(rig.rc, LAYOUT, EPOCH, lost)  # leave the rig as it was


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_init_and_the_engine_through_the_composition_root_on_a_cluster_url(
    binary: RedisBinary, tmp_path: Path, sqlite_ledger_url: str
) -> None:
    """``redis+cluster://`` through ``bootstrap``: init stamps every shard's epoch and journal
    on an empty cluster (and refuses a second time); ``open_deployment`` gives an engine on a
    ClusterStore; credits, debits across slots and a replay go through it, and the ledger's
    current epoch is the one every shard holds."""
    topology = redis_cluster(tmp_path / "rc", replicas=1)
    with Cluster(topology, binary=binary) as cluster:
        nodes = ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes())
        url = f"redis+cluster://:{cluster.password}@{nodes}"
        settings = Settings.resolve(
            redis_url=url, ledger_url=sqlite_ledger_url, home=str(tmp_path / "home")
        )
        layout = KeyLayout(settings.namespace, settings.shards)
        with SqlLedger.open(settings.ledger_url) as ledger:
            report = initialise_store(settings, layout, ledger)
            with pytest.raises(AlreadyInitialised):
                initialise_store(settings, layout, ledger)
        with open_deployment(settings) as dep:
            assert dep.is_cluster and isinstance(dep.store, ClusterStore)
            client = dep.store.cluster
            assert {client.get(layout.epoch(s)) for s in range(layout.shards)} == {
                layout.epoch_value(report.epoch_id).encode()
            }
            assert {int(client.xlen(k)) for k in layout.journals()} == {0}
            acct = "acct-e2e"
            assert dep.engine.create_account(Account(acct, "EUR", 0, AccountStatus.active)) is (
                Result.ok
            )
            credit = dep.engine.credit("e2e-credit", acct, 500, "EUR")
            assert (credit.result, credit.balance_minor) == (Result.ok, 500)
            tid = next(
                f"e2e-{n}"
                for n in range(10_000)
                if client.get_node_from_key(layout.tx_for(f"e2e-{n}"))
                != client.get_node_from_key(layout.account_key(acct))
            )
            first = dep.engine.debit(tid, acct, 120)
            assert first == TransferResult(tid, Result.ok, 380, False)
            assert dep.engine.debit(tid, acct, 120) == first._replace(replayed=True)
            assert dep.engine.accounts([acct])[acct].balance_minor == 380  # type: ignore[union-attr]
            # The drainer reads every shard's journal from its primary, fences each primary it
            # read from with WAIT on one connection, settles exactly once and trims.
            drainer = dep.drainer(replicas=1, fence_timeout_ms=500)
            assert isinstance(drainer, ClusterDrainer)
            assert drainer.run_once() == 2  # the credit's entry and the debit's
            assert drainer.stats.last_fence_acked == 1 and drainer.stats.fenced == 0
            assert drainer.run_once() == 0
            assert dep.ledger.balances([acct]) == {acct: 380}
            assert {int(client.xlen(k)) for k in layout.journals()} == {0}
            assert dep.engine.debit(tid, acct, 120) == first._replace(replayed=True)
            assert drainer.run_once() == 0  # a replay writes no journal line
            # The fence is the account shard's primary's: its replica stopped, nothing settles.
            owner = client.get_node_from_key(layout.account_key(acct))
            primary = next(
                n for n, h in cluster.nodes.items() if h.front == (owner.host, owner.port)
            )
            replicas = [n for n in cluster.nodes if n[0] == primary[0] and n != primary]
            assert dep.engine.debit(f"{tid}-2", acct, 80).result is Result.ok
            for name in replicas:
                cluster.nodes[name].pause()
            try:
                assert drainer.run_once() == 0
                assert (drainer.stats.fenced, drainer.stats.last_fence_acked) == (1, 0)
            finally:
                for name in replicas:
                    cluster.nodes[name].resume()
            assert drainer.run_once() == 1
            assert dep.ledger.balances([acct]) == {acct: 300}
            # Reconcile compares each shard on its primary at its own journal position.
            report = reconcile(dep.client, layout, dep.ledger)
            assert (report.ok, report.accounts_checked, report.undrained_lines) == (True, 1, 0)
            assert dep.engine.debit(f"{tid}-3", acct, 50).result is Result.ok
            report = reconcile(dep.client, layout, dep.ledger)
            assert (report.ok, report.undrained_lines) == (True, 1)  # journaled, not drained
            client.hset(layout.account_key(acct), "bal", 999)
            report = reconcile(dep.client, layout, dep.ledger)
            assert not report.ok
            assert [(d.account, d.reason) for d in report.drift] == [(acct, "balance")]


def test_the_cli_takes_a_cluster_url_from_init_to_reconcile(
    tmp_path: Path, sqlite_ledger_url: str
) -> None:
    """``tally init|account|credit|debit|balance|drain|reconcile --redis-url
    redis+cluster://...``: the CLI goes through the composition root like the library; a debit
    retried with the same id is a replay; drain settles each transfer once; reconcile agrees."""
    topology = redis_cluster(tmp_path / "rc", replicas=1)
    with Cluster(topology, binary=next(b for b in BINARIES if isinstance(b, RedisBinary))) as rc:
        nodes = ",".join(f"{h}:{p}" for h, p in rc.startup_nodes())
        conn = [
            "--redis-url",
            f"redis+cluster://:{rc.password}@{nodes}",
            "--ledger-url",
            sqlite_ledger_url,
            "--home",
            str(tmp_path / "home"),
        ]

        def tally(*args: str) -> dict[str, object]:
            done = subprocess.run(
                [sys.executable, "-c", TALLY_CLI, *args, *conn, "--json"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, (args, done.stdout, done.stderr)
            return json.loads(done.stdout)  # type: ignore[no-any-return]

        tally("init")
        tally("account", "create", "cli-acct", "--currency", "EUR")
        tally("credit", "cli-acct", "10.00", "--id", "cli-c1")
        first = tally("debit", "cli-acct", "2.50", "--id", "cli-d1")
        again = tally("debit", "cli-acct", "2.50", "--id", "cli-d1")
        assert again == {**first, "replayed": True}
        tally("drain")
        report = tally("reconcile")
        assert (report["accounts_drifted"], report["accounts_checked"]) == (0, 1)
        assert report["undrained_lines"] == 0
        balance = tally("balance", "cli-acct")
        assert balance["balance_minor"] == 750
