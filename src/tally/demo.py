"""The guided tour behind `tally demo`: real redis-server, real SQLite ledger, the 2013 AOF
defect reproduced for real, and tally refusing, rebuilding and reconciling."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tally.bootstrap import Deployment, open_deployment
from tally.config import Settings
from tally.domain.accounts import Account, SystemAccount
from tally.domain.money import format_amount
from tally.errors import StoreLost
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.node import RedisNode
from tally.store.keys import KeyLayout
from tally.sync.drainer import Drainer
from tally.sync.rebuild import init_store, rebuild
from tally.sync.reconcile import reconcile

#: The persistence the 2013 operators meant to run: RDB snapshots, no AOF.
RDB_ONLY: dict[str, str | int | list[str]] = {"save": ["900 1"], "appendonly": "no"}
DRAIN_ROUNDS_MAX = 100


class Tour:
    def __init__(self, base: Path, say: Callable[[str], None]) -> None:
        self.base, self.say = base, say
        self.failures: list[str] = []

    def check(self, what: str, held: bool) -> None:
        self.say(f"  {'ok ' if held else 'FAIL'} {what}")
        if not held:
            self.failures.append(what)

    def run(self) -> bool:
        node = RedisNode(name="primary", dir=self.base / "redis", directives=dict(RDB_ONLY))
        node.start()
        try:
            self.say(
                f"redis-server {node.server_binary.version_text} ({node.server_binary.source}) at {node.url}"
            )
            settings = Settings.resolve(
                redis_url=node.url,
                ledger_url=f"sqlite:///{self.base / 'ledger.sqlite3'}",
                home=str(self.base),
            )
            with SqlLedger.open(settings.ledger_url) as ledger:
                client = node.client()
                init_store(client, KeyLayout(settings.namespace, settings.shards), ledger)
                client.close()
            with open_deployment(settings) as dep:
                self._business(dep)
                self._drain(dep)
                self._reconciled(dep, "before the incident")
            self._incident(node)
            with open_deployment(settings) as dep:
                self._recover(dep)
        finally:
            node.stop()
        self.say(
            "tour finished: "
            + ("every check held" if not self.failures else f"{len(self.failures)} check(s) FAILED")
        )
        return not self.failures

    def _business(self, dep: Deployment) -> None:
        eng = dep.engine
        self.say("\n1. accounts, money in (ledger first), usage debits with client-chosen ids")
        eng.create_account(Account("alice", "USD"))
        eng.create_account(Account("bob", "USD"))
        top = eng.credit("topup-1", "alice", 5000, "USD", SystemAccount.card_clearing)
        shown = (
            "pending" if top.result is None else top.result.name
        )  # Result.ok == 0: never test truth
        self.check(f"alice topped up 50.00 USD: {shown}", top.balance_minor == 5000)
        first = eng.debit("call-1", "alice", 1234)
        again = eng.debit("call-1", "alice", 1234)
        self.check(
            f"debit call-1 of 12.34: {first.result.name}, balance {format_amount(first.balance_minor or 0, 'USD')}",
            first.balance_minor == 3766,
        )
        self.check(
            "the same debit retried moves no money (replay returns the first outcome)",
            again.replayed and again.balance_minor == 3766,
        )
        clash = eng.debit("call-1", "alice", 999)
        self.check(
            f"the same id with another amount is refused: {clash.result.name}",
            clash.result.name == "exists_with_different_amount",
        )
        poor = eng.debit("call-2", "bob", 1)
        self.check(
            f"bob has no money: {poor.result.name}", poor.result.name == "insufficient_funds"
        )

    def _drain(self, dep: Deployment) -> None:
        drainer = Drainer(dep.client, dep.layout, dep.ledger)
        for _ in range(DRAIN_ROUNDS_MAX):
            if drainer.run_once() == 0:
                break

    def _reconciled(self, dep: Deployment, when: str) -> None:
        report = reconcile(dep.client, dep.layout, dep.ledger)
        self.check(
            f"reconcile {when}: {report.accounts_checked} accounts, {report.accounts_drifted} drifted",
            report.accounts_drifted == 0,
        )

    def _incident(self, node: RedisNode) -> None:
        self.say(
            "\n2. incident #28: snapshot saved, then the primary restarted with `appendonly yes`"
        )
        node.client().save()
        node.restart(directives={"appendonly": "yes"})
        keys = node.client().dbsize()
        self.check(
            f"Redis came back with {keys} keys: the good dump.rdb was ignored, as in 2013",
            keys == 0,
        )

    def _recover(self, dep: Deployment) -> None:
        try:
            dep.engine.debit("call-3", "alice", 100)
            self.check("a write to the empty dataset was refused", False)
        except StoreLost:
            self.check(
                "a debit against the empty dataset is refused with store_lost (nothing written)",
                dep.client.dbsize() == 0,
            )
        pending = dep.engine.credit("topup-2", "alice", 1000, "USD", SystemAccount.card_clearing)
        self.check("a top-up during the outage is kept in the ledger, pending", pending.pending)
        self.say("\n3. recovery: rebuild the store from the ledger of record, under a new epoch")
        report = rebuild(dep.client, dep.layout, dep.ledger)
        self.say(
            f"  epoch {report.epoch_id}: {report.accounts_loaded} accounts and "
            f"{report.transfers_loaded} transfer records loaded from the ledger"
        )
        dep.engine.apply_pending_credits(older_than_ms=0)
        state = dep.engine.account("alice")
        self.check(
            f"alice's balance is exact again: {state and format_amount(state.balance_minor, 'USD')} USD",
            state is not None and state.balance_minor == 4766,
        )
        replay = dep.engine.debit("call-1", "alice", 1234)
        self.check(
            "a replay of a pre-incident debit still returns its first outcome",
            replay.replayed and replay.balance_minor == 3766,
        )
        self._drain(dep)
        self._reconciled(dep, "after the rebuild")
