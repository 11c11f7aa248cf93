from __future__ import annotations

import threading

import pytest
import redis
from ledger_helpers import FakeStoreWriter

from tally.domain.accounts import Account, AccountStatus
from tally.errors import StoreLost
from tally.ledger.models import EpochStatus
from tally.ledger.sql_epochs import AlreadyInitialised
from tally.ledger.sql_ledger import SqlLedger
from tally.store.keys import KeyLayout
from tally.sync.drainer import Drainer
from tally.sync.rebuild import DatasetState, RebuildRefused, init_store, rebuild
from tally.sync.reconcile import reconcile

ACCOUNTS = [f"acct-{i}" for i in range(12)]


def deployed(rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger) -> FakeStoreWriter:
    """A fresh deployment through init_store, with accounts created SQL-first then in Redis."""
    report = init_store(rclient, layout, ledger)
    writer = FakeStoreWriter(rclient, layout, report.epoch_id)
    for i, account_id in enumerate(ACCOUNTS):
        ledger.create_account(Account(account_id, "USD", 100 * (i % 3)))
        writer.account(account_id, limit_minor=100 * (i % 3))
    return writer


def traffic(writer: FakeStoreWriter, tag: str, rounds: int = 5) -> None:
    for r in range(rounds):
        batch = [(f"{tag}c{r}-{a}", "c", a, 40 + r, "USD") for a in ACCOUNTS]
        batch += [(f"{tag}d{r}-{a}", "d", a, 60 + 7 * r, "USD") for a in ACCOUNTS]
        writer.apply(batch)


def drain(rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger) -> None:
    drainer = Drainer(rclient, layout, ledger)
    for _ in range(1000):
        if drainer.run_once(limit=100) == 0:
            return


def redis_state(rclient: redis.Redis, layout: KeyLayout) -> tuple[dict[str, int], dict]:
    bals = {a: int(rclient.hget(layout.account_key(a), "bal") or 0) for a in ACCOUNTS}
    tx = {}
    for shard in range(layout.shards):
        tx.update(rclient.hgetall(layout.tx(shard)))
    return bals, tx


def test_reconcile_reports_no_drift_with_or_without_undrained_entries(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    writer = deployed(rclient, layout, ledger)
    traffic(writer, "a")
    undrained = reconcile(rclient, layout, ledger, batch=5)
    assert undrained.ok and undrained.accounts_checked == len(ACCOUNTS)
    assert undrained.undrained_lines > 0 and undrained.drift == []
    Drainer(rclient, layout, ledger, count=1).run_once(limit=3)  # partly drained
    traffic(writer, "b", rounds=2)
    assert reconcile(rclient, layout, ledger, batch=3).drift == []
    drain(rclient, layout, ledger)
    report = reconcile(rclient, layout, ledger)
    assert report.ok and report.undrained_lines == 0 and report.conservation == {"USD": 0}


def test_reconcile_finds_an_injected_drift_and_only_that(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    writer = deployed(rclient, layout, ledger)
    traffic(writer, "a")
    drain(rclient, layout, ledger)
    traffic(writer, "b", rounds=1)  # some undrained on top
    rclient.hincrby(layout.account_key(ACCOUNTS[3]), "bal", 250)
    report = reconcile(rclient, layout, ledger)
    assert report.accounts_drifted == 1 and not report.ok
    (drift,) = report.drift
    assert (drift.account, drift.diff_minor, drift.reason) == (ACCOUNTS[3], 250, "balance")
    assert drift.redis_balance_minor == drift.ledger_balance_minor + drift.undrained_minor + 250


def test_reconcile_finds_a_ledger_ahead_of_a_store_that_lost_its_last_writes(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    """A failover to a replica that missed the primary's last writes, after they were drained:
    the promoted journal ends before what the ledger holds. Comparing as of the journal's end,
    balances look right; the ledger-ahead pass is what sees the lost lines."""
    writer = deployed(rclient, layout, ledger)
    traffic(writer, "a", rounds=2)
    drain(rclient, layout, ledger)
    victim = ACCOUNTS[5]
    shard = layout.shard_of(victim)
    keys = [layout.account_key(victim), layout.journal(shard), layout.tx(shard)]
    replica_view = {k: rclient.dump(k) for k in keys}  # what the promoted replica holds
    writer.apply([("lost-credit", "c", victim, 700, "USD")])
    drain(rclient, layout, ledger)  # drained from the old primary, unfenced
    for key, value in replica_view.items():  # the failover: the replica's state takes over
        rclient.restore(key, 0, value, replace=True)
    report = reconcile(rclient, layout, ledger)
    assert not report.ok
    (drift,) = report.drift
    assert (drift.account, drift.reason, drift.diff_minor) == (victim, "ledger_ahead", -700)
    assert drift.ledger_balance_minor - drift.redis_balance_minor == 700
    rclient.hincrby(layout.account_key(victim), "bal", 5)  # now the balance pass sees it too
    again = reconcile(rclient, layout, ledger)
    assert again.accounts_drifted == 1  # one account, one finding
    assert [(d.account, d.reason) for d in again.drift] == [(victim, "balance")]


def test_reconcile_reports_accounts_missing_on_either_side(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    writer = deployed(rclient, layout, ledger)
    ledger.create_account(Account("sql-only", "USD"))
    writer.account("redis-only", balance_minor=70)
    ledger.set_status(ACCOUNTS[0], AccountStatus.suspended)  # not yet upserted to Redis
    report = reconcile(rclient, layout, ledger)
    reasons = {d.account: d.reason for d in report.drift}
    assert reasons == {
        "sql-only": "missing_in_redis",
        "redis-only": "missing_in_ledger",
        ACCOUNTS[0]: "attributes",
    }


def test_reconcile_on_a_lost_store_raises_store_lost(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    deployed(rclient, layout, ledger)
    rclient.delete(layout.epoch(2))
    with pytest.raises(StoreLost):
        reconcile(rclient, layout, ledger)


def test_reconcile_is_exact_while_writes_and_draining_continue(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    writer = deployed(rclient, layout, ledger)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for r in range(10_000):
                if stop.is_set():
                    return
                traffic(writer, f"w{r}-", rounds=1)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    drainer = Drainer(rclient, layout, ledger, count=2)
    threads = [
        threading.Thread(target=write),
        threading.Thread(target=drainer.run, args=(stop,), kwargs={"idle_s": 0.01}),
    ]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            report = reconcile(rclient, layout, ledger, batch=4)
            assert report.drift == [], report.drift[:3]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors and drainer.stats.errors == 0
    drain(rclient, layout, ledger)
    assert reconcile(rclient, layout, ledger).ok


def test_rebuild_into_an_empty_redis_restores_balances_and_transfer_records(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    writer = deployed(rclient, layout, ledger)
    traffic(writer, "a")
    writer.apply([("fail-1", "d", ACCOUNTS[0], 10**9, "USD")])  # insufficient funds
    drain(rclient, layout, ledger)
    before = redis_state(rclient, layout)
    old = ledger.current_epoch()
    rclient.flushall()  # F3: the primary restarted with nothing
    report = rebuild(rclient, layout, ledger)
    assert (report.dataset_before, report.accounts_loaded) == ("empty", len(ACCOUNTS))
    assert redis_state(rclient, layout) == before
    new = ledger.current_epoch()
    assert new is not None and old is not None and new.epoch_id != old.epoch_id
    retired = ledger.get_epoch(old.epoch_id)
    assert retired is not None and retired.status is EpochStatus.retired
    assert rclient.get(layout.rebuilding) is None
    writer = FakeStoreWriter(rclient, layout, new.epoch_id)
    replay = writer.apply([("fail-1", "d", ACCOUNTS[0], 10**9, "USD")])[0]
    assert replay.startswith("replay:d|") and replay.split("|")[4] == "7"  # the first outcome
    traffic(writer, "after")
    drain(rclient, layout, ledger)
    assert reconcile(rclient, layout, ledger).ok


def test_rebuild_refuses_a_healthy_or_foreign_dataset_without_force(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    writer = deployed(rclient, layout, ledger)
    traffic(writer, "a", rounds=1)
    with pytest.raises(RebuildRefused, match="healthy"):
        rebuild(rclient, layout, ledger)
    rclient.set("someone-else:key", "precious")
    size = rclient.dbsize()
    with pytest.raises(RebuildRefused, match="occupied"):
        rebuild(rclient, layout, ledger)
    assert rclient.dbsize() == size and ledger.building_epoch() is None
    drain(rclient, layout, ledger)
    report = rebuild(rclient, layout, ledger, force=True)
    assert report.keys_deleted > 0 and rclient.get("someone-else:key") == b"precious"
    assert reconcile(rclient, layout, ledger).ok


def test_a_forced_rebuild_of_a_healthy_dataset_never_drops_an_undrained_entry(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    writer = deployed(rclient, layout, ledger)
    traffic(writer, "a", rounds=2)
    before = redis_state(rclient, layout)
    journal_before = [rclient.xlen(key) for key in layout.journals()]
    with pytest.raises(RebuildRefused, match="undrained"):
        rebuild(rclient, layout, ledger, force=True)
    assert redis_state(rclient, layout) == before  # nothing deleted, still writable
    assert [rclient.xlen(key) for key in layout.journals()] == journal_before
    assert ledger.building_epoch() is None
    writer.apply([("after-refusal", "c", ACCOUNTS[0], 1, "USD")])  # the epoch keys are intact
    drain(rclient, layout, ledger)
    rebuild(rclient, layout, ledger, force=True)
    assert reconcile(rclient, layout, ledger).ok
    assert {a: ledger.balance_of(a) for a in ACCOUNTS} == redis_state(rclient, layout)[0]


def test_an_entry_delivered_to_a_drainer_but_not_acknowledged_counts_as_undrained(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    writer = deployed(rclient, layout, ledger)
    traffic(writer, "a", rounds=1)
    for key in layout.journals():  # a drainer read them and died before applying
        rclient.xreadgroup("drainer", "dead", {key: ">"})
    with pytest.raises(RebuildRefused, match="undrained"):
        rebuild(rclient, layout, ledger, force=True)


def test_an_interrupted_rebuild_can_be_run_again(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = deployed(rclient, layout, ledger)
    traffic(writer, "a")
    drain(rclient, layout, ledger)
    before = redis_state(rclient, layout)
    rclient.flushall()
    import tally.sync.rebuild as rb

    def crash(*_args: object) -> None:
        raise KeyboardInterrupt("killed while loading")

    monkeypatch.setattr(rb, "_create_streams", crash)
    with pytest.raises(KeyboardInterrupt):
        rebuild(rclient, layout, ledger)
    assert rclient.get(layout.rebuilding) is not None
    with pytest.raises(StoreLost):  # the drainer will not touch a half-built dataset
        Drainer(rclient, layout, ledger).run_once()
    monkeypatch.undo()
    report = rebuild(rclient, layout, ledger)
    assert report.dataset_before == DatasetState.interrupted.value
    assert redis_state(rclient, layout) == before
    assert reconcile(rclient, layout, ledger).ok


def test_init_store_refuses_an_initialised_ledger(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    deployed(rclient, layout, ledger)
    with pytest.raises(AlreadyInitialised):
        init_store(rclient, layout, ledger)


def test_rebuild_adds_the_account_fields_other_layers_own(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    deployed(rclient, layout, ledger)
    rclient.flushall()

    def recharge_fields(ids: object) -> dict[str, dict[str, str | int]]:
        return {ACCOUNTS[1]: {"rt": 500, "ro": "rc-1"}}

    rebuild(rclient, layout, ledger, account_fields=recharge_fields)
    key = layout.account_key(ACCOUNTS[1])
    assert rclient.hmget(key, "rt", "ro", "cur") == [b"500", b"rc-1", b"USD"]
    assert rclient.hget(layout.account_key(ACCOUNTS[2]), "rt") is None


def test_rebuild_restores_exactly_the_transfer_records_inside_the_idempotency_window(
    rclient: redis.Redis, layout: KeyLayout, ledger: SqlLedger
) -> None:
    import sqlalchemy as sa

    from tally.ledger.schema import transfers

    window_ms = 3_600_000
    writer = deployed(rclient, layout, ledger)
    traffic(writer, "old", rounds=2)
    traffic(writer, "new", rounds=2)
    drain(rclient, layout, ledger)
    balances_before, _ = redis_state(rclient, layout)
    with ledger.transaction(write=True) as conn:  # the "old" ones happened two windows ago
        conn.execute(
            sa.update(transfers)
            .where(transfers.c.id.like("old%"))
            .values(ts_ms=transfers.c.ts_ms - 2 * window_ms)
        )
    rclient.flushall()
    report = rebuild(rclient, layout, ledger, idempotency_window_ms=window_ms)
    balances, records = redis_state(rclient, layout)
    assert balances == balances_before  # balances come from every transfer, window or not
    restored = {k.decode() for k in records}
    assert restored == {t for t in restored if t.startswith("new")}
    assert len(restored) == report.transfers_loaded == 2 * 2 * len(ACCOUNTS)
