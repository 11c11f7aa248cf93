"""Rebuilding one shard of a real Redis Cluster (3 primaries with a replica each, both
binaries) from the ledger under an epoch of its own: a primary restarted empty refuses its
shards with ``store_lost`` while the others serve; ``rebuild_store(shard=K)`` (what ``tally
rebuild --shard K`` and ``POST /v1/admin/rebuild {"shard": K}`` run) restores K while another
shard takes writes; running engines pick the new epoch up without a restart; replays return
the first outcome exactly; balances equal the ledger; nothing is lost; the other shards'
epochs never change."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.cluster import RedisCluster

from tally.bootstrap import Deployment, open_deployment
from tally.config import Settings
from tally.domain.accounts import Account, AccountStatus
from tally.domain.holds import HoldCode, HoldStatus
from tally.domain.results import Result
from tally.errors import StoreLost, UsageError
from tally.ops.binary import RedisBinary
from tally.ops.cluster import Cluster
from tally.ops.cluster.status import cluster_status, compare_ledger_epochs
from tally.store.discovery import ClusterTarget, cluster_client
from tally.store.keys import KeyLayout
from tally.sync import shard_rebuild
from tally.sync.rebuild import RebuildRefused
from tally.sync.reconcile import reconcile
from tally.sync.shard_rebuild import rebuild_store
from tests.binaries import BINARIES, binary_id
from tests.serve.harness import Served

from .rc_topologies import redis_cluster
from .store_rig import LAYOUT, drain, name_in, store_on_cluster

TALLY_CLI = "from tally.cli.main import main; main()"


@dataclass
class Rig:
    cluster: Cluster
    settings: Settings
    dep: Deployment  # one running engine ("a serve process")

    @property
    def rc(self) -> RedisCluster:
        return self.dep.store.client  # type: ignore[no-any-return]

    def owner(self, shard: int) -> tuple[str, int]:
        node = self.rc.get_node_from_key(LAYOUT.epoch(shard))
        return (node.host, node.port)

    def shards_on(self, owner: tuple[str, int]) -> list[int]:
        return [s for s in range(LAYOUT.shards) if self.owner(s) == owner]

    def epochs(self) -> dict[int, bytes | None]:
        return {s: self.rc.get(LAYOUT.epoch(s)) for s in range(LAYOUT.shards)}  # type: ignore[misc]

    @staticmethod
    def name(shard: int, prefix: str, *, where: set[int] | None = None) -> str:
        """A fresh id whose shard is ``shard`` (or, ``where``, one of those shards)."""
        return _name(shard, prefix, where=where)

    def drain(self, *, lost_ok: bool = False) -> None:
        drain(self.dep, lost_ok=lost_ok)


_name = name_in


@pytest.fixture(params=BINARIES, ids=binary_id)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    binary: RedisBinary = request.param
    with store_on_cluster(tmp_path, binary) as (cluster, settings, dep):
        yield Rig(cluster, settings, dep)


def _open(rig: Rig, aid: str, balance: int, *, limit: int = 0) -> None:
    engine = rig.dep.engine
    assert engine.create_account(Account(aid, "EUR", limit, AccountStatus.active)) is Result.ok
    if balance:
        assert engine.credit(f"fund-{aid}", aid, balance, "EUR").result is Result.ok


def _lose(rig: Rig, owner: tuple[str, int]) -> None:
    """The 2013 defect on one primary: its dataset gone (its replica follows it empty)."""
    name = next(n for n, h in rig.cluster.nodes.items() if h.front == owner)
    rig.cluster.nodes[name].client().flushall()


def test_one_shard_rebuilt_alone_while_another_takes_writes_replays_and_balances_hold(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole story on a real cluster. Shard K's primary restarted empty: K's accounts and
    the ids reserved in K refuse with store_lost while another primary's shard serves. The
    one-shard rebuild of K runs while a debit goes to that other shard (the rebuild is held
    inside its load step until the write is done) and K still refuses meanwhile. Afterwards:
    two running engines (neither restarted, neither told) serve K again at K's new epoch
    (``Engine.recover`` reads it from the ledger), every replay inside the window returns its
    whole first outcome, an id of K used again on another account is a conflict (K's
    transfer-id records were restored, also those whose account lives elsewhere), holds and
    credit limits are back, Redis balances equal the ledger's, K's new journal lines drain
    into the ledger (none foreign) and reconcile agrees; no other shard's epoch changed.

    Seen failing without each defence (each removed by hand in turn, this test run): the
    per-shard split in ``sql_apply._split_foreign`` (the deployment epoch for every shard): K's
    new debit became a foreign_epoch journal conflict (count 1, not 0); the per-shard ids in
    ``Engine.recover`` (compare the deployment epoch only): the engine kept answering
    store_lost for shard K after its rebuild; the drainer skipping a lost shard
    (``Drainer.run_once`` raising at once): K's new debit never reached the ledger while the
    primary's other shards were lost (store 845, ledger 870); K's transfer-id records
    (``_load_transfers`` given no shard): the replay of ``tid_same`` was applied again
    (balance 770) instead of answering its first outcome (900)."""
    ledger = rig.dep.ledger
    before = ledger.epoch_view()
    assert before is not None
    k = LAYOUT.shard_of("acct-k")
    lost_owner = rig.owner(k)
    lost = rig.shards_on(lost_owner)
    serving = [s for s in range(LAYOUT.shards) if s not in lost]
    # accounts: one in K (with a credit limit), one on a serving shard
    a_k, other = rig.name(k, "acct"), rig.name(0, "acct", where=set(serving))
    _open(rig, a_k, 1000, limit=50)
    _open(rig, other, 1000)
    # debits: id and account in K; id in K, account elsewhere; id elsewhere, account in K
    tid_same = rig.name(k, "t")
    tid_k_elsewhere = rig.name(k, "t")
    tid_elsewhere_k = rig.name(0, "t", where=set(serving))
    firsts = {
        tid_same: rig.dep.engine.debit(tid_same, a_k, 100),
        tid_k_elsewhere: rig.dep.engine.debit(tid_k_elsewhere, other, 70),
        tid_elsewhere_k: rig.dep.engine.debit(tid_elsewhere_k, a_k, 30),
        "over": rig.dep.engine.debit(rig.name(k, "t"), a_k, 5000),  # refused: recorded too
    }
    assert [r.result for r in firsts.values()] == [Result.ok] * 3 + [Result.insufficient_funds]
    # holds: one on K's account (open), one whose id routes through K on another account
    hold_k, hold_route_k = rig.name(0, "h", where=set(serving)), rig.name(k, "h")
    placed = rig.dep.engine.place_hold(hold_k, a_k, 200, 3_600_000)
    routed = rig.dep.engine.place_hold(hold_route_k, other, 10, 3_600_000)
    assert (placed.code, routed.code) == (HoldCode.ok, HoldCode.ok)
    rig.drain()
    second = open_deployment(rig.settings)  # another running process
    try:
        assert second.engine.account(a_k) is not None
        epochs_before = rig.epochs()
        _lose(rig, lost_owner)
        # K refuses (its accounts and ids reserved in K); a serving shard serves
        with pytest.raises(StoreLost):
            rig.dep.engine.debit(rig.name(k, "t"), a_k, 1)
        with pytest.raises(StoreLost):
            rig.dep.engine.debit(rig.name(k, "t"), other, 1)
        assert rig.dep.engine.debit(rig.name(0, "t", where=set(serving)), other, 1).result is (
            Result.ok
        )
        # the rebuild of K alone, held inside its load step while another shard takes a write
        loading, go = threading.Event(), threading.Event()
        real_load = shard_rebuild._load_transfers

        def held_load(*args: Any, **kwargs: Any) -> int:
            loading.set()
            assert go.wait(60)
            return real_load(*args, **kwargs)

        monkeypatch.setattr(shard_rebuild, "_load_transfers", held_load)
        done: dict[str, Any] = {}

        def run() -> None:
            try:
                done["report"] = rebuild_store(
                    rig.rc,
                    LAYOUT,
                    ledger,
                    shard=k,
                    idempotency_window_ms=rig.settings.idempotency_window_ms,
                )
            except BaseException as exc:  # reported to the test thread
                done["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        try:
            assert loading.wait(60)
            during = rig.dep.engine.debit(rig.name(0, "t", where=set(serving)), other, 2)
            assert during.result is Result.ok
            with pytest.raises(StoreLost):  # K does not serve half-loaded
                rig.dep.engine.debit(rig.name(k, "t"), a_k, 1)
        finally:
            go.set()
            worker.join(120)
        assert "error" not in done, done.get("error")
        report = done["report"]
        assert (report.shard, report.kind, report.dataset_before) == (k, "shard", "empty")
        after = ledger.epoch_view()
        assert after is not None and after.epoch == before.epoch  # the deployment's unchanged
        assert after.of(k) == report.epoch_id != before.epoch.epoch_id
        assert [after.of(s) for s in range(LAYOUT.shards) if s != k] == [
            before.of(s) for s in range(LAYOUT.shards) if s != k
        ]
        now = rig.epochs()
        assert now[k] == LAYOUT.epoch_value(report.epoch_id).encode()
        for s in serving:  # the other primaries' shards: untouched
            assert now[s] == epochs_before[s]
        for s in lost:  # the other shards lost with K stay lost until rebuilt themselves
            if s != k:
                assert now[s] is None
        # both engines serve K again without a restart, replays answer the first outcome
        for engine in (rig.dep.engine, second.engine):
            for tid, first in firsts.items():
                if tid == "over":
                    continue
                account = other if tid == tid_k_elsewhere else a_k
                amount = {tid_same: 100, tid_k_elsewhere: 70, tid_elsewhere_k: 30}[tid]
                assert engine.debit(tid, account, amount) == first._replace(replayed=True)
            reused = engine.debit(tid_k_elsewhere, a_k, 70)  # K's record of an id: restored
            assert reused.result is Result.exists_with_different_account
        hold = rig.dep.engine.get_hold(hold_k)
        assert (hold.status, hold.amount_minor, hold.account_id) == (HoldStatus.open, 200, a_k)
        assert rig.dep.engine.get_hold(hold_route_k).account_id == other
        state = rig.dep.engine.account(a_k)
        assert state is not None
        assert (state.held_minor, state.account.credit_limit_minor) == (200, 50)
        # K takes new money; its journal (epoch e=K's own) drains into the ledger, none foreign
        assert rig.dep.engine.debit(rig.name(k, "t"), a_k, 25).result is Result.ok
        rig.drain(lost_ok=True)  # the other shards of the lost primary are not rebuilt yet
        assert ledger.journal_conflicts_count() == 0
        for aid in (a_k, other):
            state = rig.dep.engine.account(aid)
            assert state is not None and state.balance_minor == ledger.balance_of(aid)
        assert ledger.balance_of(a_k) == 1000 - 100 - 30 - 25
        assert ledger.balance_of(other) == 1000 - 70 - 1 - 2
        # the rest of the primary's shards, one by one; then reconcile agrees everywhere
        for s in lost:
            if s != k:
                rebuild_store(rig.rc, LAYOUT, ledger, shard=s)
        checked = reconcile(rig.rc, LAYOUT, ledger)
        assert (checked.ok, checked.accounts_checked) == (True, 2)
        # cluster status: the ledger's epoch of each logical shard beside its primary's
        view = ledger.epoch_view()
        assert view is not None
        shards = cluster_status(rig.cluster)["cluster"]
        values = [LAYOUT.epoch_value(i) for i in view.shard_ids]
        assert compare_ledger_epochs(shards, "tally", values) == []
        rig.rc.delete(LAYOUT.epoch(k))
        assert compare_ledger_epochs(shards, "tally", values) == []  # the old reading
        shards = cluster_status(rig.cluster)["cluster"]
        assert compare_ledger_epochs(shards, "tally", values) == [LAYOUT.epoch(k)]
    finally:
        second.close()


@pytest.mark.parametrize("binary", BINARIES[:1], ids=binary_id)
def test_a_healthy_shard_is_rebuilt_only_when_forced_and_drained_and_one_primary_refuses_shard(
    binary: RedisBinary, tmp_path: Path
) -> None:
    """The rebuild's safety, per shard: a healthy shard is refused without ``force`` (nothing
    changed); with ``force`` it is refused while its journal holds an undrained entry (the
    debit stays in Redis, the shard keeps serving); drained, the forced rebuild replaces it
    with a new epoch of its own and the debit's money is in the rebuilt balance. A whole
    rebuild on a cluster restores every shard under one new deployment epoch (shard epochs
    retired). A single-primary deployment refuses ``shard``.

    Seen failing without the fence (``_fence_shard``'s and ``_refuse_undrained``'s undrained
    counts replaced by 0 by hand): the forced rebuild did not raise, it went ahead over the
    shard's undrained debit."""
    with store_on_cluster(tmp_path, binary) as (cluster, settings, dep):
        rig = Rig(cluster, settings, dep)
        k = LAYOUT.shard_of("acct-h")
        aid = rig.name(k, "acct")
        _open(rig, aid, 1000)
        rig.drain()
        assert dep.engine.debit(rig.name(k, "t"), aid, 100).result is Result.ok
        before = rig.epochs()
        with pytest.raises(RebuildRefused, match="healthy"):
            rebuild_store(rig.rc, LAYOUT, dep.ledger, shard=k)
        with pytest.raises(RebuildRefused, match="undrained"):
            rebuild_store(rig.rc, LAYOUT, dep.ledger, shard=k, force=True)
        assert rig.epochs() == before  # nothing changed, K serves
        assert dep.engine.debit(rig.name(k, "t"), aid, 1).result is Result.ok
        rig.drain()
        report = rebuild_store(rig.rc, LAYOUT, dep.ledger, shard=k, force=True)
        assert (report.dataset_before, report.accounts_loaded) == ("healthy", 1)
        state = dep.engine.account(aid)
        assert state is not None and state.balance_minor == 899 == dep.ledger.balance_of(aid)
        after = rig.epochs()
        assert [s for s in after if after[s] != before[s]] == [k]
        # the whole cluster, one new deployment epoch; K's own epoch retired
        rig.drain()
        whole = rebuild_store(rig.rc, LAYOUT, dep.ledger, force=True)
        view = dep.ledger.epoch_view()
        assert view is not None and view.epoch.epoch_id == whole.epoch_id
        assert set(view.shard_ids) == {whole.epoch_id}
        assert set(rig.epochs().values()) == {LAYOUT.epoch_value(whole.epoch_id).encode()}
        state = dep.engine.account(aid)
        assert state is not None and state.balance_minor == 899
        with pytest.raises(UsageError, match="shard must be"):
            rebuild_store(rig.rc, LAYOUT, dep.ledger, shard=LAYOUT.shards)
    single = KeyLayout("tally", 4)
    with pytest.raises(UsageError, match="one primary"):
        rebuild_store(object(), single, None, shard=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("binary", BINARIES[:1], ids=binary_id)
def test_serve_heals_a_primary_restarted_empty_through_the_admin_api_and_the_cli(
    binary: RedisBinary, tmp_path: Path
) -> None:
    """Through ``tally serve`` on a cluster: a primary restarted empty makes its shards refuse
    (503 store_lost) while an account on another primary keeps taking debits over HTTP; one of
    its shards is rebuilt by ``tally rebuild --shard K`` (another process: the running server
    picks K's epoch up from the ledger on its next request), the rest by ``POST
    /v1/admin/rebuild {"shard": K}`` (the interface the lab's shard-restarted-empty scenario
    calls); then every shard serves, readiness says so, replays answer the first outcome and
    balances are the ledger's. A credit taken while its shard was lost waits (its intent in
    the ledger) and is applied by the rebuild of its shard; the rebuilds before it answer 200,
    not the 503 its still-lost shard raised (seen by the cluster lab, and here: both the CLI
    and the first admin call failed with store_lost before ``reapply_after_rebuild``). A shard
    out of range is a 4xx with a clear error, not a 500."""
    with Cluster(redis_cluster(tmp_path / "rc", replicas=1), binary=binary) as cluster:
        nodes = ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes())
        url = f"redis+cluster://:{cluster.password}@{nodes}"
        served = Served(home=tmp_path / "home", extra_args=["--redis-url", url])
        served.start()
        try:
            _heal_through_serve(served, cluster, url)
        finally:
            code = served.stop(signal.SIGINT)
        assert code == 0, served.output()


def _heal_through_serve(served: Served, cluster: Cluster, url: str) -> None:
    rc = cluster_client(
        ClusterTarget(tuple(cluster.startup_nodes()), password=cluster.password),
        socket_timeout_s=5.0,
    )
    try:
        k = LAYOUT.shard_of("acct-k")
        owner = rc.get_node_from_key(LAYOUT.epoch(k))
        lost = [s for s in range(LAYOUT.shards) if rc.get_node_from_key(LAYOUT.epoch(s)) == owner]
        serving = {s for s in range(LAYOUT.shards) if s not in lost}
        last = max(s for s in lost if s != k)  # rebuilt last: a credit waits for it meanwhile
        a_k, other = _name(k, "acct"), _name(0, "acct", where=serving)
        waiting = _name(last, "acct")
        with served.client() as api:
            for aid in (a_k, other, waiting):
                created = api.post("/v1/accounts", json={"id": aid, "currency": "USD"})
                assert created.status_code == 201, created.text
                fund = {"transfer_id": f"f-{aid}", "account_id": aid, "amount_minor": 1000}
                assert api.post("/v1/credits", json={**fund, "currency": "USD"}).status_code == 201
            debit = {"transfer_id": _name(k, "t"), "account_id": a_k, "amount_minor": 300}
            first = api.post("/v1/debits", json=debit)
            assert first.status_code == 201, first.text
            assert api.post("/v1/admin/drain").status_code == 200
            node = next(h for h in cluster.nodes.values() if h.front == (owner.host, owner.port))
            node.client().flushall()
            refused = api.post("/v1/debits", json={**debit, "transfer_id": _name(k, "t")})
            assert (refused.status_code, refused.json()["code"]) == (503, "store_lost")
            elsewhere = {"account_id": other, "amount_minor": 5}
            ok = api.post(
                "/v1/debits", json={**elsewhere, "transfer_id": _name(0, "t", where=serving)}
            )
            assert ok.status_code == 201, ok.text
            credit = {"transfer_id": "late", "account_id": waiting, "amount_minor": 40}
            pending = api.post("/v1/credits", json={**credit, "currency": "USD"})
            assert pending.status_code >= 202, pending.text  # not applied: its shard is lost
            bad = api.post("/v1/admin/rebuild", json={"shard": LAYOUT.shards})
            assert 400 <= bad.status_code < 500 and "shard" in bad.text, bad.text
            cli = subprocess.run(
                [sys.executable, "-c", TALLY_CLI, "rebuild", "--shard", str(k), "--json",
                 "--redis-url", url, "--ledger-url", f"sqlite:///{served.home / 'ledger.sqlite3'}",
                 "--home", str(served.home)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert cli.returncode == 0, cli.stderr
            assert json.loads(cli.stdout)["shard"] == k
            for s in sorted(lost, key=lambda s: s == last):  # ``last`` last
                if s != k:
                    rebuilt = api.post("/v1/admin/rebuild", json={"force": False, "shard": s})
                    assert rebuilt.status_code == 200, rebuilt.text
                    assert rebuilt.json()["shard"] == s
            assert rebuilt.json()["credits_reapplied"] >= 1  # the waiting credit, at last
            again = api.post("/v1/debits", json=debit)  # the server follows K's new epoch
            assert (again.status_code, again.json()) == (first.status_code, first.json())
            ready = httpx.get(served.url + "/readyz", timeout=30, trust_env=False)
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["shards"]["values"]["serving"] == LAYOUT.shards
            assert api.post("/v1/admin/drain").status_code == 200
            report = api.post("/v1/admin/reconcile").json()
            assert report["ok"] is True, report
            assert api.get(f"/v1/accounts/{a_k}").json()["balance_minor"] == 700
            assert api.get(f"/v1/accounts/{other}").json()["balance_minor"] == 995
            assert api.get(f"/v1/accounts/{waiting}").json()["balance_minor"] == 1040
    finally:
        rc.close()
