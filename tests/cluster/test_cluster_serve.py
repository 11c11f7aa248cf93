"""``tally serve --redis-url redis+cluster://...`` as a real subprocess on a real 3-primary Redis
Cluster (both redis-server binaries): accounts on every primary, debits and credits over HTTP, a
replay answering the whole first outcome, readiness per shard, recharges gated per shard, and a
clean SIGINT stop with the journal drained into the ledger."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.cluster import RedisCluster

from tally.config import Settings
from tally.errors import StoreLost
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.binary import RedisBinary
from tally.ops.cluster import Cluster
from tally.ops.cluster.status import cluster_status
from tally.service.runner import prepare_store
from tally.store.discovery import ClusterTarget, cluster_client
from tally.store.keys import KeyLayout
from tests.binaries import BINARIES, binary_id
from tests.serve.harness import Served
from tests.waiting import wait_for

from .rc_topologies import redis_cluster

LAYOUT = KeyLayout("tally", 16)  # the default namespace and shard count (Settings)
RULE = {
    "card_id": "card_ok",
    "threshold_minor": 500,
    "target_minor": 2000,
    "daily_cap_minor": 100_000,
}
QUIET_S = 1.5  # several completer rounds: long enough for a wrong charge to show


@dataclass
class Rig:
    cluster: Cluster
    rc: RedisCluster
    url: str

    def owner(self, account_id: str) -> tuple[str, int]:
        node = self.rc.get_node_from_key(LAYOUT.epoch(LAYOUT.shard_of(account_id)))
        return (node.host, node.port)

    def accounts_on_each_primary(self, prefix: str) -> list[str]:
        """One account id per primary (three distinct primaries)."""
        found: dict[tuple[str, int], str] = {}
        for n in range(10_000):  # bounded: a hit comes within a few names
            aid = f"{prefix}-{n}"
            found.setdefault(self.owner(aid), aid)
            if len(found) == 3:
                return list(found.values())
        raise AssertionError("no account id on every primary")


@pytest.fixture(params=BINARIES, ids=binary_id)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    binary: RedisBinary = request.param
    topology = redis_cluster(tmp_path / "rc", replicas=1)
    with Cluster(topology, binary=binary) as cluster:
        nodes = ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes())
        target = ClusterTarget(tuple(cluster.startup_nodes()), password=cluster.password)
        client = cluster_client(target, socket_timeout_s=5.0)
        try:
            yield Rig(cluster, client, f"redis+cluster://:{cluster.password}@{nodes}")
        finally:
            client.close()


def _serve(rig: Rig, tmp_path: Path) -> Served:
    served = Served(home=tmp_path / "home", extra_args=["--redis-url", rig.url])
    served.start()
    return served


def _readyz(served: Served) -> tuple[int, dict[str, Any]]:
    reply = httpx.get(served.url + "/readyz", timeout=30, trust_env=False)
    body: dict[str, Any] = reply.json()
    return reply.status_code, body


def _open(api: httpx.Client, account_id: str, funds_minor: int) -> None:
    created = api.post("/v1/accounts", json={"id": account_id, "currency": "USD"})
    assert created.status_code == 201, created.text
    fund = {
        "transfer_id": f"fund-{account_id}",
        "account_id": account_id,
        "amount_minor": funds_minor,
        "currency": "USD",
    }
    credited = api.post("/v1/credits", json=fund)
    assert credited.status_code == 201, credited.text


def test_serve_on_a_cluster_debits_credits_replays_and_drains_at_sigint(
    rig: Rig, tmp_path: Path
) -> None:
    """The whole path on a cluster: start (init on the empty cluster, preflight on every node),
    ready with every shard serving, accounts on each of the three primaries, a debit replayed
    with the whole first outcome (and the balance moved once), a conflicting reuse refused,
    then SIGINT: exit 0 and every transfer drained into the ledger with the right balances."""
    served = _serve(rig, tmp_path)
    try:
        assert "initialised a new deployment on the cluster" in served.output()
        code, ready = _readyz(served)
        assert code == 200, ready
        shards = ready["checks"]["shards"]["values"]
        assert shards["serving"] == LAYOUT.shards
        assert {shards[f"shard_{k}"] for k in range(LAYOUT.shards)} == {"serving"}
        accounts = rig.accounts_on_each_primary("acct")
        with served.client() as api:
            for aid in accounts:
                _open(api, aid, 1000)
            firsts = {}
            for aid in accounts:
                debit = {"transfer_id": f"d-{aid}", "account_id": aid, "amount_minor": 300}
                first = api.post("/v1/debits", json=debit)
                assert first.status_code == 201, first.text
                again = api.post("/v1/debits", json=debit)
                assert (again.status_code, again.json()) == (first.status_code, first.json())
                firsts[aid] = first.json()
                other = api.post("/v1/debits", json={**debit, "amount_minor": 301})
                assert other.status_code == 409, other.text
            for aid in accounts:
                assert firsts[aid]["balance_minor"] == 700
                assert api.get(f"/v1/accounts/{aid}").json()["balance_minor"] == 700
    finally:
        code = served.stop(signal.SIGINT)
    assert code == 0, served.output()
    with SqlLedger.open(f"sqlite:///{served.home / 'ledger.sqlite3'}") as ledger:
        assert ledger.count_transfers() == 2 * len(accounts)  # the fund and one debit each
        assert [ledger.balance_of(aid) for aid in accounts] == [700] * len(accounts)
    _start_check_judges_each_shard(rig, served.home, accounts[0])


def _start_check_judges_each_shard(rig: Rig, home: Path, account_id: str) -> None:
    """``prepare_store`` (serve's start-up epoch check) on the cluster, per shard: all shards
    current passes; one primary restarted empty is named and the others serve (no refusal);
    ``--rebuild`` rebuilds each of its empty shards alone under an epoch of its own, after which
    every shard is current; a foreign epoch on any shard refuses the start (nothing written)."""
    settings = Settings.resolve(
        redis_url=rig.url, ledger_url=f"sqlite:///{home / 'ledger.sqlite3'}", home=str(home)
    )
    said: list[str] = []
    prepare_store(settings, rebuild_if_lost=False, say=said.append)
    assert said == []
    shard = LAYOUT.shard_of(account_id)
    host, port = rig.owner(account_id)
    node = next(h for h in rig.cluster.nodes.values() if h.front == (host, port))
    node.client().flushall()
    prepare_store(settings, rebuild_if_lost=False, say=said.append)
    assert len(said) == 1 and f"{shard}" in said[0] and "empty or unreachable" in said[0]
    lost = [s for s in range(LAYOUT.shards) if rig.rc.get(LAYOUT.epoch(s)) is None]
    assert shard in lost
    said.clear()
    prepare_store(settings, rebuild_if_lost=True, say=said.append)  # each empty shard alone
    assert len(said) == len(lost) and all("rebuilt" in line for line in said)
    values = {s: rig.rc.get(LAYOUT.epoch(s)) for s in range(LAYOUT.shards)}
    assert all(values.values()) and len({values[s] for s in lost}) == len(lost)  # their own
    said.clear()
    prepare_store(settings, rebuild_if_lost=False, say=said.append)  # all current now
    assert said == []
    rig.rc.set(LAYOUT.epoch(shard), "foreign/16")
    with pytest.raises(StoreLost, match="foreign epoch"):
        prepare_store(settings, rebuild_if_lost=False, say=said.append)
    assert rig.rc.get(LAYOUT.epoch(shard)) == b"foreign/16"


def _status_shows_each_shards_epoch(rig: Rig, *, lost: str, epoch: str) -> None:
    """``tally cluster status``'s shards: each primary's epoch keys, read on that primary; the
    one restarted empty shows none."""
    shards = cluster_status(rig.cluster)["cluster"]["shards"]
    assert len(shards) == 3
    for shard in shards.values():
        if shard["primary"] == lost:
            assert (shard["store_epoch"], shard["store_epochs"]) == (None, {})
        else:
            assert shard["store_epoch"] == epoch
            keys = shard["store_epochs"]
            assert keys and set(keys.values()) == {epoch}
            for key in keys:  # each key is one this primary owns
                node = rig.rc.get_node_from_key(key)
                assert rig.cluster.nodes[shard["primary"]].front == (node.host, node.port)
    owned = sum(len(s["store_epochs"]) for s in shards.values())
    assert 0 < owned < LAYOUT.shards


def _recharges(api: httpx.Client, account_id: str) -> list[dict[str, Any]]:
    reply = api.get("/v1/recharges", params={"account": account_id})
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def _one(api: httpx.Client, account_id: str) -> dict[str, Any] | None:
    items = _recharges(api, account_id)
    return items[0] if len(items) == 1 else None


def test_a_lost_shard_stops_only_its_own_recharges_and_readiness_stays_up(
    rig: Rig, tmp_path: Path
) -> None:
    """Recharge health per shard (issue 15, item 4). Recharges of accounts on two primaries are
    opened while billing is frozen; then one primary loses its data (the 2013 defect on one
    shard: FLUSHALL there, as a primary restarted empty) and the freeze is lifted. The other
    shard's recharge completes (charged once, balance at target) while the lost shard's waits,
    naming ``store_epoch_invalid`` and its shard; /readyz stays 200 with that shard's reason.
    Without per-shard health the gate would judge the whole cluster and hold both."""
    served = _serve(rig, tmp_path)
    try:
        lost_aid, fine_aid, _ = rig.accounts_on_each_primary("rc")
        with served.client() as api:
            for aid in (lost_aid, fine_aid):
                _open(api, aid, 1000)
                rule = api.put(f"/v1/accounts/{aid}/recharge-rule", json=RULE)
                assert rule.status_code == 200, rule.text
            frozen = api.post("/v1/admin/freeze", json={"on": True, "reason": "test"})
            assert frozen.status_code == 200, frozen.text
            for aid in (lost_aid, fine_aid):
                debit = {"transfer_id": f"d-{aid}", "account_id": aid, "amount_minor": 600}
                assert api.post("/v1/debits", json=debit).status_code == 201
            for aid in (lost_aid, fine_aid):
                wait_for(
                    lambda aid=aid: "frozen" in ((_one(api, aid) or {}).get("wait_reason") or ""),
                    f"the recharge of {aid} to wait on the freeze",
                )
            lost_shard = LAYOUT.shard_of(lost_aid)
            host, port = rig.owner(lost_aid)
            node = next(h for h in rig.cluster.nodes.values() if h.front == (host, port))
            node.client().flushall()
            assert api.post("/v1/admin/freeze", json={"on": False}).status_code == 200
            done = wait_for(
                lambda: (lambda r: r if r and r["finished"] else None)(_one(api, fine_aid)),
                "the other shard's recharge to finish",
            )
            assert done["phase"] == "succeeded" and done["amount_minor"] == 1600
            assert api.get(f"/v1/accounts/{fine_aid}").json()["balance_minor"] == 2000
            waiting = wait_for(
                lambda: (
                    lambda r: r if r and "store_epoch_invalid" in (r["wait_reason"] or "") else None
                )(_one(api, lost_aid)),
                "the lost shard's recharge to wait on its shard",
            )
            assert f"shard {lost_shard}" in waiting["wait_reason"]
            assert not waiting["finished"] and waiting["phase"] == "opened"
            time.sleep(QUIET_S)
            still = _one(api, lost_aid)
            assert still is not None and still["phase"] == "opened"
            code, ready = _readyz(served)
            assert code == 200, ready
            values = ready["checks"]["shards"]["values"]
            assert values[f"shard_{lost_shard}"] == "store_lost"
            assert 0 < values["serving"] < LAYOUT.shards
            fine_shard = LAYOUT.shard_of(fine_aid)
            assert values[f"shard_{fine_shard}"] == "serving"
            metrics = api.get("/metrics").text
            assert (
                f'tally_store_shard_serving{{reason="store_lost",shard="{lost_shard}"}} 0.0'
                in metrics
            )
            assert f'tally_store_shard_serving{{reason="",shard="{fine_shard}"}} 1.0' in metrics
            assert f"tally_store_shards_serving {float(values['serving'])}" in metrics
            epoch = LAYOUT.epoch_value(str(ready["checks"]["ledger"]["values"]["epoch"]))
            _status_shows_each_shards_epoch(rig, lost=node.name, epoch=epoch)
    finally:
        code = served.stop(signal.SIGINT)
    assert code == 0, served.output()
