"""A hypothesis state machine over the REAL store (redis-server) and a SQLite ledger: places,
captures, voids, expiries by the server's clock (short holds), the sweeper, concurrent debits
and holds on one account from several threads, drains, and store faults (the dataset's epoch
lost: every hold script refuses; the store lost and rebuilt from the ledger).

After every step: no account's available balance is negative (two sessions never spend the
same money), the held sum is exactly the open holds' amounts, and no hold was ever captured at
or after its expiry. After a drain: reconcile finds the store and the ledger in agreement,
posted balances and held sums (so available balances) alike."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tally.billing.engine import Engine
from tally.domain.accounts import Account
from tally.domain.holds import HoldCode, HoldStatus
from tally.errors import StoreLost
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.node import RedisNode
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore
from tally.sync.drainer import Drainer
from tally.sync.rebuild import init_store, rebuild
from tally.sync.reconcile import reconcile

from .conftest import server_ms, wait_past

ACCOUNTS = ("a1", "a2")
LIMIT = {"a1": 0, "a2": 50}
HOLDS = tuple(f"h{i}" for i in range(8))
SHORT_MS, LONG_MS = 1, 600_000
DRAIN_ROUNDS_MAX = 100


def machine(node: RedisNode) -> type[RuleBasedStateMachine]:
    class HoldMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.client: redis.Redis = node.client()
            self.client.flushall()
            self.layout = KeyLayout("tally", 4)
            self.ledger = SqlLedger.open("sqlite://")
            report = init_store(self.client, self.layout, self.ledger)
            self.store = RedisStore(self.client, self.layout, report.epoch_id)
            self.store.load_scripts()
            self.engine = Engine(self.store, self.ledger)
            self.seq = 0
            self.lost = False
            for aid in ACCOUNTS:
                self.engine.create_account(Account(aid, "USD", LIMIT[aid]))
                self.engine.credit(f"seed-{aid}", aid, 300, "USD")

        def teardown(self) -> None:
            self.ledger.close()
            self.client.close()

        def _id(self, prefix: str) -> str:
            self.seq += 1
            return f"{prefix}{self.seq}"

        # -- what happens ------------------------------------------------------------------
        @precondition(lambda self: not self.lost)
        @rule(
            hold=st.sampled_from(HOLDS),
            account=st.sampled_from(ACCOUNTS),
            amount=st.integers(1, 400),
            short=st.booleans(),
        )
        def place(self, hold: str, account: str, amount: int, short: bool) -> None:
            o = self.engine.place_hold(hold, account, amount, SHORT_MS if short else LONG_MS)
            if o.code is HoldCode.ok and short and not o.replayed:
                assert o.expires_at_ms is not None
                wait_past(self.client, o.expires_at_ms)  # expired by the server's clock

        @precondition(lambda self: not self.lost)
        @rule(hold=st.sampled_from(HOLDS), amount=st.integers(1, 400))
        def capture(self, hold: str, amount: int) -> None:
            before = server_ms(self.client)
            o = self.engine.capture_hold(hold, amount)
            if o.code is HoldCode.ok and not o.replayed:
                assert o.expires_at_ms is not None and before < o.expires_at_ms, (
                    "captured at or after its expiry"
                )
            if o.expires_at_ms is not None and before >= o.expires_at_ms and not o.replayed:
                assert o.code is not HoldCode.ok

        @precondition(lambda self: not self.lost)
        @rule(hold=st.sampled_from(HOLDS))
        def void(self, hold: str) -> None:
            self.engine.void_hold(hold)

        @precondition(lambda self: not self.lost)
        @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 400))
        def debit(self, account: str, amount: int) -> None:
            self.engine.debit(self._id("d"), account, amount)

        @precondition(lambda self: not self.lost)
        @rule(
            account=st.sampled_from(ACCOUNTS),
            amounts=st.lists(st.integers(1, 200), min_size=2, max_size=6),
        )
        def concurrent_debits_and_holds(self, account: str, amounts: list[int]) -> None:
            """Half the amounts as debits, half as new holds, all at once from threads."""
            calls: list[Callable[[], Any]] = []
            for n, amount in enumerate(amounts):
                if n % 2:
                    calls.append(lambda a=amount: self.engine.debit(self._id("cd"), account, a))
                else:
                    hid = self._id("ch")
                    calls.append(
                        lambda a=amount, h=hid: self.engine.place_hold(h, account, a, LONG_MS)
                    )
            with ThreadPoolExecutor(len(calls)) as pool:
                for future in [pool.submit(c) for c in calls]:
                    future.result()

        @precondition(lambda self: not self.lost)
        @rule()
        def sweep(self) -> None:
            self.engine.sweep_holds()

        @precondition(lambda self: not self.lost)
        @rule()
        def drain_and_reconcile(self) -> None:
            drainer = Drainer(self.client, self.layout, self.ledger)
            for _ in range(DRAIN_ROUNDS_MAX):
                if drainer.run_once() == 0:
                    break
            report = reconcile(self.client, self.layout, self.ledger)
            assert report.ok, report.drift
            ledger_held = self.ledger.held(list(ACCOUNTS))
            states = self.engine.accounts(ACCOUNTS)
            for aid in ACCOUNTS:
                state = states[aid]
                assert state is not None and state.held_minor == ledger_held[aid]

        @precondition(lambda self: not self.lost)
        @rule()
        def the_epoch_is_lost(self) -> None:
            """A foreign or empty dataset: every hold script refuses and writes nothing."""
            self.client.delete(*(self.layout.epoch(s) for s in range(self.layout.shards)))
            size = self.client.dbsize()
            for call in (
                lambda: self.store.place_hold(self._id("lost"), "a1", 1, LONG_MS),
                lambda: self.store.capture_hold("h0", 1),
                lambda: self.store.void_hold("h0"),
                lambda: self.store.sweep_holds(),
            ):
                with pytest.raises(StoreLost):
                    call()
            assert self.client.dbsize() == size
            self.lost = True

        @precondition(lambda self: self.lost)
        @rule()
        def rebuild_from_the_ledger(self) -> None:
            """What the operator runs: the undrained journal is gone with the dataset; the
            ledger's holds come back with their expiry and the store agrees with the ledger."""
            report = rebuild(self.client, self.layout, self.ledger, force=True)
            self.store.set_epoch(report.epoch_id)
            self.engine.apply_pending_credits(older_than_ms=0)
            self.lost = False
            self.drain_and_reconcile()

        # -- what must always hold -----------------------------------------------------------
        def _holds(self) -> list[dict[bytes, bytes]]:
            out = []
            for shard in range(self.layout.shards):
                pattern = self.layout.hold(shard, "*")
                for key in self.client.scan_iter(match=pattern, count=1000):
                    out.append(self.client.hgetall(key))
            return out

        @invariant()
        def available_is_never_negative_and_held_is_the_open_holds(self) -> None:
            holds = self._holds()
            for aid in ACCOUNTS:
                fields = self.client.hgetall(self.layout.account_key(aid))
                if not fields:
                    continue  # the store is lost; the rebuild brings it back
                bal, hd = int(fields[b"bal"]), int(fields.get(b"hd", b"0"))
                open_sum = sum(
                    int(h[b"amt"])
                    for h in holds
                    if h[b"a"] == aid.encode() and h[b"st"] == HoldStatus.open.code.encode()
                )
                assert hd == open_sum, (aid, hd, open_sum)
                assert bal - hd + LIMIT[aid] >= 0, (aid, bal, hd)

    return HoldMachine


def test_holds_debits_expiry_faults_and_rebuilds_keep_the_invariants(
    redis_node: RedisNode,
) -> None:
    run_state_machine_as_test(
        machine(redis_node),
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
