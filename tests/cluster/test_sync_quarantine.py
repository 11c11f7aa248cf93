"""A hardened cluster node serves syncs only once admitted, so a primary restarted EMPTY (the
2013 defect on one shard) cannot empty its replicas, and ``rebuild --shard K`` promotes the
replica that still holds the shard: the undrained journal survives (tally.ops.cluster.admission,
tally.sync.shard_promote). Real 3-primary clusters with a replica each, on both binaries.

One cluster, two primaries, the same restart on each:
* control, on one primary: the restarted node is admitted at once (what a node without the
  quarantine does): its replica full-syncs the empty set and the shard's epoch key and its
  undrained journal are gone from every copy;
* subject, on another: the node stays out (its judgement says why), its replica keeps the epoch
  and the journal; the one-shard rebuild promotes the replica instead of loading the ledger;
  the acknowledged debit that was never drained replays with its whole first outcome, drains
  into the ledger, and the old primary is back as an admitted replica.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from tally.bootstrap import Deployment
from tally.domain.accounts import Account, AccountStatus
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.ops.binary import RedisBinary
from tally.ops.cluster import Cluster, ClusterNode
from tally.ops.cluster.admission import admit, is_admitted
from tally.ops.cluster.procs import command
from tally.ops.node import ConfigValue
from tally.sync.cluster_admission import sweep
from tally.sync.shard_rebuild import rebuild_store
from tests.binaries import BINARIES, binary_id

from .store_rig import LAYOUT, drain, name_in, store_on_cluster

SYNC_WAIT_S = 20.0
KEEPS_DATA_S = 4.0  # a replica retries its primary every second: four chances to copy it


@dataclass
class Rig:
    cluster: Cluster
    dep: Deployment

    @property
    def rc(self) -> RedisCluster:
        return self.dep.store.client  # type: ignore[no-any-return]

    def primary_of(self, shard: int) -> ClusterNode:
        node = self.rc.get_node_from_key(LAYOUT.epoch(shard))
        return next(h for h in self.cluster.nodes.values() if h.front == (node.host, node.port))

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        names = next(
            [n.name for n in s.nodes]
            for s in self.cluster.topology.shards
            if primary.name in {n.name for n in s.nodes}
        )
        return next(self.cluster.nodes[n] for n in names if n != primary.name)

    def drain(self) -> None:
        """Until nothing is left on the serving shards (a lost shard waits)."""
        drain(self.dep, lost_ok=True)


@pytest.fixture(params=BINARIES, ids=binary_id)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    binary: RedisBinary = request.param
    with store_on_cluster(tmp_path, binary) as (cluster, _settings, dep):
        yield Rig(cluster, dep)


_name = name_in


def _empty_restart(cluster: Cluster, handle: ClusterNode) -> None:
    """The 2013 operator's restart: ``appendonly yes`` pointing at an AOF that is not there."""
    mutation: dict[str, ConfigValue] = {"appendonly": "yes"}
    if cluster.binary.at_least(7, 0):
        mutation["appenddirname"] = "appendonlydir-incident28"
    else:
        mutation["appendfilename"] = "appendonly-incident28.aof"
    handle.restart(directives=mutation)


def _held(handle: ClusterNode, shard: int) -> tuple[bool, int]:
    """(the shard's epoch key there, its journal length) on one node, replica or not."""
    with contextlib.closing(handle.client(socket_timeout=2.0)) as c:
        command(c, "READONLY")
        return bool(c.exists(LAYOUT.epoch(shard))), int(c.xlen(LAYOUT.journal(shard)))


def _in_sync(replica: ClusterNode) -> bool:
    with contextlib.closing(replica.client(socket_timeout=2.0)) as c:
        info = c.info("replication")
    return info.get("master_link_status") == "up"


def _wait(check: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # bounded by the deadline
        with contextlib.suppress(redis.RedisError, OSError):
            if check():  # type: ignore[operator]
                return True
        time.sleep(0.1)
    return False


def _open_with_undrained_debit(rig: Rig, shard: int) -> tuple[str, str, TransferResult]:
    """An account of ``shard`` funded and drained, then a debit of that shard acknowledged
    (with WAIT: its replica has it) and NOT drained. Returns (account, debit id, outcome)."""
    engine = rig.dep.engine
    aid = _name(shard, "acct")
    assert engine.create_account(Account(aid, "EUR", 0, AccountStatus.active)) is Result.ok
    assert engine.credit(_name(shard, "fund"), aid, 10_000, "EUR").result is Result.ok
    rig.drain()
    debit_id = _name(shard, "use")
    outcome = engine.debit(debit_id, aid, 700, "EUR")
    assert outcome.result is Result.ok
    return aid, debit_id, outcome


def test_an_empty_primary_cannot_empty_its_replica_and_the_rebuild_promotes_the_replica(
    rig: Rig,
) -> None:
    shards = {rig.primary_of(s).name: s for s in range(LAYOUT.shards)}
    (control_node, control_shard), (subject_node, subject_shard) = list(shards.items())[:2]
    control, subject = rig.cluster.nodes[control_node], rig.cluster.nodes[subject_node]
    _open_with_undrained_debit(rig, control_shard)
    aid, debit_id, first = _open_with_undrained_debit(rig, subject_shard)
    control_replica, subject_replica = rig.replica_of(control), rig.replica_of(subject)
    assert _held(control_replica, control_shard)[0] and _held(subject_replica, subject_shard)[0]

    # control: admitted at once, as a node without the quarantine would serve its replica
    _empty_restart(rig.cluster, control)
    with contextlib.closing(control.client()) as c:
        admit(c)
    assert _wait(lambda: _held(control_replica, control_shard) == (False, 0), SYNC_WAIT_S), (
        "the replica should have copied the empty primary: the control shows nothing"
    )

    # subject: the same restart; the judgement keeps it out and the replica keeps the shard
    _empty_restart(rig.cluster, subject)
    assert subject.admission is not None and not subject.admission.admitted
    assert "EMPTY primary" in subject.admission.reason and subject_replica.name in (
        subject.admission.reason
    )
    time.sleep(KEEPS_DATA_S)
    held, journal = _held(subject_replica, subject_shard)
    assert held and journal >= 1, "the replica must keep the shard and its undrained journal"

    # judged again (`tally cluster admit`): the same answer, and only for that node
    assert [a.node for a in rig.cluster.judge_all() if not a.admitted] == [subject.name]

    report = rebuild_store(rig.rc, LAYOUT, rig.dep.ledger, shard=subject_shard)
    assert report.kind == "promotion" and report.shard == subject_shard
    assert report.accounts_loaded == 0 and report.transfers_loaded == 0
    assert subject_replica.live_role() == "master" and subject.live_role() == "slave"
    with contextlib.closing(subject_replica.client()) as c:
        assert is_admitted(c) is True
    assert _wait(lambda: _in_sync(subject), SYNC_WAIT_S)
    with contextlib.closing(subject.client()) as c:
        assert is_admitted(c) is True

    assert all(a.admitted for a in rig.cluster.judge_all())

    replay = rig.dep.engine.debit(debit_id, aid, 700, "EUR")
    assert replay == first._replace(replayed=True)  # the whole first outcome
    rig.drain()  # the control's shard stays lost; every other shard drains
    assert rig.dep.ledger.balance_of(aid) == 10_000 - 700  # the undrained debit reached it
    state = rig.dep.engine.account(aid)
    assert state is not None and state.balance_minor == 10_000 - 700


def test_a_restart_tally_never_saw_is_judged_by_the_sweep_serve_runs(rig: Rig) -> None:
    """A primary restarted with its data but without the judgement (systemd, a hand: the
    process alone) is quarantined by its config file: its replica cannot sync and stays
    behind. The sweep ``tally serve`` runs every few seconds (``sync.cluster_admission``)
    finds it, judges it (it holds its epochs) and lets it in; the replica catches up."""
    node = rig.primary_of(0)
    replica = rig.replica_of(node)
    node.stop(save=True)
    node.node.start()  # the process alone: no judgement
    with contextlib.closing(node.client()) as c:
        assert is_admitted(c) is False
    time.sleep(KEEPS_DATA_S)
    assert not _in_sync(replica), "quarantined: its replica cannot sync"

    judged = sweep(rig.rc)
    assert [(a.admitted, "epoch key" in a.reason) for a in judged] == [(True, True)], judged
    assert _wait(lambda: _in_sync(replica), SYNC_WAIT_S)
    assert sweep(rig.rc) == []  # nothing quarantined any more
